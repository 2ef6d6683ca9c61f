//! Typed emit helpers for producers inside the process (the demo, Rust services):
//! one method per event, each building its payload through the one write path.

use std::sync::Arc;

use jobstream_protocol::{
    BatchItem, CompleteStep, CreateJob, CustomEventRequest, EventType, JobSnapshot, JobStatus, OutputStream,
    ProgressRequest, StartStep, StatusRequest, StepOutputRequest, StepSnapshot, ValidationError,
};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::WriteError;
use crate::sink::Committed;
use crate::writer::JobEvents;

fn any_workspace(_: &str) -> bool {
    true
}

impl JobEvents {
    async fn emit(&self, item: BatchItem) -> Result<Arc<Committed>, WriteError> {
        Ok(self.write(item, any_workspace).await?.event)
    }

    /// `job:created`: creates a job (seq 1). Returns the job and whether it is new.
    pub async fn emit_job_created(&self, request: CreateJob) -> Result<(JobSnapshot, bool), WriteError> {
        self.create_job(request).await
    }

    /// `job:status`: moves a job to `status`, with a result (completed) or an error (failed, cancelled).
    pub async fn emit_job_status_changed(
        &self,
        job_id: Uuid,
        status: JobStatus,
        result: Option<Value>,
        error: Option<String>,
    ) -> Result<Arc<Committed>, WriteError> {
        let request = StatusRequest { status, result, error };
        jobstream_protocol::requests::Request::validate(&request)?;
        self.emit(BatchItem::Status(job_id, request)).await
    }

    /// `job:progress`.
    pub async fn emit_job_progress(
        &self,
        job_id: Uuid,
        progress: u8,
        message: Option<String>,
    ) -> Result<Arc<Committed>, WriteError> {
        let request = checked_progress(progress, message)?;
        self.emit(BatchItem::Progress(job_id, request)).await
    }

    /// `step:started`: starts a running step.
    pub async fn emit_step_started(
        &self,
        job_id: Uuid,
        request: StartStep,
    ) -> Result<(StepSnapshot, Arc<Committed>), WriteError> {
        jobstream_protocol::requests::Request::validate(&request)?;
        let applied = self.write(BatchItem::Step(job_id, request), any_workspace).await?;
        let step = applied.step.ok_or_else(|| WriteError::Conflict("step was not created".into()))?;
        Ok((step, applied.event))
    }

    /// `step:progress`.
    pub async fn emit_step_progress(
        &self,
        job_id: Uuid,
        step_id: Uuid,
        progress: u8,
        message: Option<String>,
    ) -> Result<Arc<Committed>, WriteError> {
        let request = checked_progress(progress, message)?;
        self.emit(BatchItem::StepProgress(job_id, step_id, request)).await
    }

    /// `step:output`: a chunk of live output.
    pub async fn emit_step_output(
        &self,
        job_id: Uuid,
        step_id: Uuid,
        chunk: impl Into<String>,
        stream: OutputStream,
    ) -> Result<Arc<Committed>, WriteError> {
        let request = StepOutputRequest { chunk: chunk.into(), stream: Some(stream) };
        self.emit(BatchItem::Output(job_id, step_id, request)).await
    }

    /// `step:completed`: finishes a running step as completed, failed or skipped.
    pub async fn emit_step_completed(
        &self,
        job_id: Uuid,
        step_id: Uuid,
        request: CompleteStep,
    ) -> Result<(StepSnapshot, Arc<Committed>), WriteError> {
        jobstream_protocol::requests::Request::validate(&request)?;
        let applied = self.write(BatchItem::StepComplete(job_id, step_id, request), any_workspace).await?;
        let step = applied.step.ok_or_else(|| WriteError::Conflict("step was not completed".into()))?;
        Ok((step, applied.event))
    }

    /// `job:event`: an `ai.*` or `gate.*` event.
    pub async fn emit_job_event(
        &self,
        job_id: Uuid,
        event_type: EventType,
        step_id: Option<Uuid>,
        payload: Map<String, Value>,
    ) -> Result<Arc<Committed>, WriteError> {
        let request = CustomEventRequest { event_type, step_id, payload: Some(payload) };
        jobstream_protocol::requests::Request::validate(&request)?;
        self.emit(BatchItem::Event(job_id, request)).await
    }
}

fn checked_progress(progress: u8, message: Option<String>) -> Result<ProgressRequest, ValidationError> {
    let request = ProgressRequest { progress: i64::from(progress), message };
    jobstream_protocol::requests::Request::validate(&request)?;
    Ok(request)
}
