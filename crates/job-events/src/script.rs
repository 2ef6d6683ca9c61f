//! Statements sent to SQLite as one request.
//!
//! sqlx runs each SQLite connection on a thread of its own, and every
//! statement is a round trip to it: the thread is woken, runs the statement,
//! answers and sleeps again, and the task that waits for the answer is woken
//! in turn. For a write of one event those wake-ups cost more CPU than the
//! statements themselves (BENCHMARKS.md §2, "The cost of a write"). A
//! [`Script`] joins statements with `;` and their bound values in order, so a
//! write's reads go as one request and its changes as another: sqlx prepares
//! and runs the statements of one request one after the other, binding
//! SQLite's unnumbered `?` parameters across them in order.
//!
//! Used where writes go through sea-orm: SQLite in memory (a SQLite file is
//! written on the writer's own thread, where a statement is a function call:
//! see `sqlite_writer`) and PostgreSQL.
//!
//! PostgreSQL's extended protocol takes one statement per request, so there
//! the statements run one after the other, as before; its server runs in its
//! own process and is reached over a socket, not through a thread of ours.

use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, QueryResult, Statement, Values};

/// Statements to run in order in one transaction (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Script {
    statements: Vec<Statement>,
}

impl Script {
    /// Adds a statement after the others.
    pub(crate) fn push(&mut self, statement: Statement) {
        self.statements.push(statement);
    }

    /// The statements, in order.
    pub(crate) fn into_statements(self) -> Vec<Statement> {
        self.statements
    }

    /// Runs every statement, rows discarded. The first failing statement ends
    /// the script with its error; the statements before it took effect (the
    /// caller rolls back the transaction or its savepoint).
    pub(crate) async fn execute(self, tx: &DatabaseTransaction) -> Result<(), DbErr> {
        match self.into_request(tx.get_database_backend()) {
            Request::One(Some(statement)) => tx.execute(statement).await.map(drop),
            Request::One(None) => Ok(()),
            Request::Each(statements) => {
                for statement in statements {
                    tx.execute(statement).await?;
                }
                Ok(())
            }
        }
    }

    /// Runs every statement and returns the rows of all of them, in order.
    /// A row does not say which statement made it: give each statement's rows
    /// a column that tells (see [`ROW_KIND`]).
    pub(crate) async fn query_all(self, tx: &DatabaseTransaction) -> Result<Vec<QueryResult>, DbErr> {
        match self.into_request(tx.get_database_backend()) {
            Request::One(Some(statement)) => tx.query_all(statement).await,
            Request::One(None) => Ok(Vec::new()),
            Request::Each(statements) => {
                let mut rows = Vec::new();
                for statement in statements {
                    rows.extend(tx.query_all(statement).await?);
                }
                Ok(rows)
            }
        }
    }

    fn into_request(self, backend: DbBackend) -> Request {
        if backend != DbBackend::Sqlite {
            return Request::Each(self.statements);
        }
        let mut statements = self.statements.into_iter();
        let Some(first) = statements.next() else { return Request::One(None) };
        let Some(second) = statements.next() else { return Request::One(Some(first)) };
        let mut sql = first.sql;
        let mut values = first.values.map(|v| v.0).unwrap_or_default();
        for statement in std::iter::once(second).chain(statements) {
            sql.push_str(";\n");
            sql.push_str(&statement.sql);
            values.extend(statement.values.map(|v| v.0).unwrap_or_default());
        }
        Request::One(Some(Statement { sql, values: Some(Values(values)), db_backend: backend }))
    }
}

/// The name of the column that tells which statement of a [`Script`] a row
/// came from.
pub(crate) const ROW_KIND: &str = "row_kind";

enum Request {
    /// SQLite: the statements joined into one (none when there were none).
    One(Option<Statement>),
    /// PostgreSQL: one request per statement.
    Each(Vec<Statement>),
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    async fn sqlite() -> sea_orm::DatabaseConnection {
        let db = sea_orm::Database::connect("sqlite::memory:").await.expect("open an in-memory database");
        db.execute_unprepared("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL)").await.expect("create");
        db
    }

    fn insert(id: i64, name: &str) -> Statement {
        Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "INSERT INTO t (id, name) VALUES (?, ?)",
            [id.into(), name.into()],
        )
    }

    #[tokio::test]
    async fn a_script_binds_each_statements_values_to_that_statement() {
        use sea_orm::TransactionTrait;
        let db = sqlite().await;
        let tx = db.begin().await.expect("begin");
        let mut script = Script::default();
        script.push(insert(1, "one"));
        script.push(Statement::from_string(DbBackend::Sqlite, "UPDATE t SET name = name || '!'"));
        script.push(insert(2, "two; DROP TABLE t"));
        script.execute(&tx).await.expect("the script runs");
        let mut reads = Script::default();
        for id in [2_i64, 1] {
            reads.push(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                format!("SELECT 'row{id}' AS {ROW_KIND}, name FROM t WHERE id = ?"),
                [id.into()],
            ));
        }
        let rows = reads.query_all(&tx).await.expect("the reads run");
        let rows: Vec<(String, String)> = rows
            .iter()
            .map(|row| (row.try_get("", ROW_KIND).expect("kind"), row.try_get("", "name").expect("name")))
            .collect();
        assert_eq!(rows, [("row2".into(), "two; DROP TABLE t".into()), ("row1".into(), "one!".into())]);
    }

    #[tokio::test]
    async fn a_failing_statement_ends_the_script_with_its_error() {
        use sea_orm::TransactionTrait;
        let db = sqlite().await;
        let tx = db.begin().await.expect("begin");
        let mut script = Script::default();
        script.push(insert(1, "one"));
        script.push(insert(1, "again"));
        script.push(insert(2, "never"));
        let err = script.execute(&tx).await.expect_err("the second insert fails");
        assert!(matches!(err.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_))), "{err}");
        tx.rollback().await.expect("rollback");
        let rows = db.query_all(Statement::from_string(DbBackend::Sqlite, "SELECT id FROM t")).await.expect("read");
        assert!(rows.is_empty());
    }
}
