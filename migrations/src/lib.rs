//! jobstream-migrations: the database schema, as ordered sea-orm migrations.
//!
//! A migration that has shipped is never edited: a change is a new migration.

pub use sea_orm_migration::prelude::*;

mod m20261124_000001_create_jobs;
mod m20261130_000002_commit_order;
mod m20261130_000003_job_list_indexes;
mod m20261130_000004_step_log_lines;
mod m20261201_000005_pruned_jobs;

/// Every migration, oldest first.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_create_jobs::Migration),
            Box::new(m20261130_000002_commit_order::Migration),
            Box::new(m20261130_000003_job_list_indexes::Migration),
            Box::new(m20261130_000004_step_log_lines::Migration),
            Box::new(m20261201_000005_pruned_jobs::Migration),
        ]
    }
}
