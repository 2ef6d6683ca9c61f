//! sea-orm entities for the three tables: jobs, job steps, and job events.

pub mod job_events;
pub mod job_steps;
pub mod jobs;
