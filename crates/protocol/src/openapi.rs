//! OpenAPI schemas (feature `openapi`) of the two wire types whose shape serde
//! attributes alone do not tell: [`Timestamp`] (an RFC 3339 string) and
//! [`Event`] (common fields, then the fields of its `type`, contract §2).
//!
//! Every other wire type derives `utoipa::ToSchema` next to its serde derive.

use std::borrow::Cow;

use utoipa::openapi::schema::{
    AllOfBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Ref, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use crate::event::{
    CustomEvent, Event, EventType, JobCreated, JobProgress, SocketEvent, StatusChanged, StepFinished, StepOutput,
    StepProgress, StepStarted,
};
use crate::time::Timestamp;

impl PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339 UTC time with milliseconds, e.g. `2025-01-31T12:00:00.000Z`"))
            .into()
    }
}

impl ToSchema for Timestamp {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Timestamp")
    }
}

/// The schema of the type-specific fields that go with a Socket.IO event
/// (the same pairing as `EventBody::fits`).
fn body_schema(socket_event: SocketEvent) -> (Cow<'static, str>, RefOr<Schema>) {
    fn entry<T: ToSchema>() -> (Cow<'static, str>, RefOr<Schema>) {
        (T::name(), T::schema())
    }
    match socket_event {
        SocketEvent::JobCreated => entry::<JobCreated>(),
        SocketEvent::JobStatus => entry::<StatusChanged>(),
        SocketEvent::JobProgress => entry::<JobProgress>(),
        SocketEvent::StepStarted => entry::<StepStarted>(),
        SocketEvent::StepProgress => entry::<StepProgress>(),
        SocketEvent::StepOutput => entry::<StepOutput>(),
        SocketEvent::StepCompleted => entry::<StepFinished>(),
        SocketEvent::JobEvent => entry::<CustomEvent>(),
    }
}

/// The Socket.IO events in the order their types first appear in [`EventType::ALL`].
fn socket_events() -> Vec<SocketEvent> {
    let mut events = Vec::new();
    for t in EventType::ALL {
        if !events.contains(&t.socket_event()) {
            events.push(t.socket_event());
        }
    }
    events
}

fn string(format: Option<KnownFormat>) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).format(format.map(SchemaFormat::KnownFormat))
}

impl PartialSchema for Event {
    fn schema() -> RefOr<Schema> {
        let common = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("eventId", string(Some(KnownFormat::Uuid)).description(Some("UUID v7 of the event")))
            .required("eventId")
            .property(
                "seq",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .minimum(Some(1))
                    .description(Some("position in the job's stream: 1, 2, 3… without gaps")),
            )
            .required("seq")
            .property("type", Ref::from_schema_name(EventType::name()))
            .required("type")
            .property("jobId", string(Some(KnownFormat::Uuid)))
            .required("jobId")
            .property("workspaceId", string(None))
            .required("workspaceId")
            .property(
                "stepId",
                ObjectBuilder::new()
                    .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
                    .description(Some("the step the event is about, or null for job-level events")),
            )
            .required("stepId")
            .property("timestamp", Ref::from_schema_name(Timestamp::name()))
            .required("timestamp");
        // One branch per Socket.IO event: its `type` values and its fields.
        // The `type` values of the branches are disjoint, so exactly one matches.
        let mut bodies = OneOfBuilder::new();
        for socket_event in socket_events() {
            let types: Vec<&str> =
                EventType::ALL.into_iter().filter(|t| t.socket_event() == socket_event).map(|t| t.as_str()).collect();
            let (name, _) = body_schema(socket_event);
            bodies = bodies.item(
                AllOfBuilder::new()
                    .item(ObjectBuilder::new().property("type", string(None).enum_values(Some(types))).required("type"))
                    .item(Ref::from_schema_name(name))
                    .description(Some(format!("carried by the Socket.IO event `{}`", socket_event.as_str()))),
            );
        }
        AllOfBuilder::new()
            .item(common)
            .item(bodies)
            .description(Some(
                "One stored event (contract §2): the common fields, then the fields of its `type`. \
                 `seq` is per job, from 1, without gaps.",
            ))
            .into()
    }
}

impl ToSchema for Event {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Event")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((EventType::name().into_owned(), EventType::schema()));
        schemas.push((Timestamp::name().into_owned(), Timestamp::schema()));
        for socket_event in socket_events() {
            let (name, schema) = body_schema(socket_event);
            schemas.push((name.into_owned(), schema));
        }
        JobCreated::schemas(schemas);
        StatusChanged::schemas(schemas);
        StepStarted::schemas(schemas);
        StepFinished::schemas(schemas);
        StepOutput::schemas(schemas);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_belongs_to_exactly_one_branch_of_the_event_schema() {
        let events = socket_events();
        for t in EventType::ALL {
            assert_eq!(events.iter().filter(|e| **e == t.socket_event()).count(), 1, "{t}");
        }
        assert_eq!(events.len(), 8);
    }
}
