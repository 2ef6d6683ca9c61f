//! Property tests of every request parser and of the body rules: whatever the
//! input, no panic; every refusal names a field; every accepted value reads
//! back unchanged. Bounded (case counts below) so that they run in CI.

use jobstream_protocol::json::{check_body, reads_back_exactly, MAX_DEPTH};
use jobstream_protocol::requests::Request;
use jobstream_protocol::{
    BatchRequest, CompleteStep, CreateJob, CustomEventRequest, ProgressRequest, StartStep, StatusRequest,
    StepOutputRequest, SubscribeJob, SubscribeWorkspace, UnsubscribeJob, ValidationError,
};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Keys the parsers know, mixed with random ones, so that generated objects
/// reach the field checks and not only "missing field".
const KEYS: &[&str] = &[
    "jobId",
    "since",
    "workspaceId",
    "id",
    "type",
    "priority",
    "metadata",
    "status",
    "result",
    "error",
    "progress",
    "message",
    "name",
    "phase",
    "stepType",
    "chunk",
    "stream",
    "tokensInput",
    "tokensOutput",
    "stepId",
    "payload",
    "events",
    "kind",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        (0i64..=101).prop_map(Value::from),
        "[a-z_.]{0,12}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        Just(json!("00000000-0000-0000-0000-000000000001")),
        prop::sample::select(vec![
            "queued",
            "running",
            "completed",
            "failed",
            "cancelled",
            "pending",
            "setup",
            "execution",
            "command",
            "gate",
            "stdout",
            "stderr",
            "skipped",
            "output",
            "progress",
            "status",
            "step",
            "event",
            "gate.passed",
            "ai.tool_called",
            "job.completed",
        ])
        .prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS).prop_map(str::to_owned), inner.clone()), 0..8)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
            prop::collection::vec(("[a-zA-Z]{1,6}", inner), 0..4)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn named(err: &ValidationError) -> bool {
    !err.field.is_empty() && !err.message.is_empty()
}

/// Parses with `T`, and checks the invariants: no panic, a refusal names its
/// field, an accepted request serializes and parses back to itself.
fn check<T: Request + serde::Serialize + PartialEq + std::fmt::Debug>(value: Value) -> Result<(), TestCaseError> {
    match T::parse(value) {
        Ok(parsed) => {
            let again = serde_json::to_value(&parsed).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let reparsed = T::parse(again).ok();
            prop_assert_eq!(reparsed.as_ref(), Some(&parsed), "accepted value reads back unchanged");
        }
        Err(err) => prop_assert!(named(&err), "refusal without a field: {err:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_request_parser_refuses_with_a_field_or_reads_back(value in json_value()) {
        check::<SubscribeJob>(value.clone())?;
        check::<SubscribeWorkspace>(value.clone())?;
        check::<UnsubscribeJob>(value.clone())?;
        check::<CreateJob>(value.clone())?;
        check::<StatusRequest>(value.clone())?;
        check::<ProgressRequest>(value.clone())?;
        check::<StartStep>(value.clone())?;
        check::<StepOutputRequest>(value.clone())?;
        check::<CompleteStep>(value.clone())?;
        check::<CustomEventRequest>(value.clone())?;
        if let Err(err) = BatchRequest::parse(value) {
            prop_assert!(named(&err));
        }
    }

    #[test]
    fn a_batch_of_generated_items_names_the_refused_item(items in prop::collection::vec(json_value(), 1..5)) {
        if let Err(err) = BatchRequest::parse(json!({ "events": items })) {
            prop_assert!(err.field.starts_with("events"), "{err:?}");
        }
    }

    #[test]
    fn the_body_check_never_panics_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = check_body(&bytes);
    }

    #[test]
    fn an_accepted_body_reads_back_as_the_same_value(value in json_value()) {
        let text = serde_json::to_string(&value).map_err(|e| TestCaseError::fail(e.to_string()))?;
        match check_body(text.as_bytes()) {
            Ok(()) => {
                let back: Value = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&back, &value);
                prop_assert_eq!(serde_json::to_string(&back).ok(), Some(text));
            }
            Err(err) => prop_assert!(named(&err)),
        }
    }

    #[test]
    fn an_integer_literal_is_accepted_exactly_when_it_fits_in_64_bits_or_a_double_writes_it_back_as_sent(digits in "-?[1-9][0-9]{0,30}") {
        let fits = digits.parse::<i64>().is_ok() || digits.parse::<u64>().is_ok();
        // Independent of the implementation: std's shortest round-trip form of the
        // nearest double, printed without an exponent, is the literal itself
        // (`20000000000000000000` yes, `18446744073709551616` no: it would come back
        // as `18446744073709552000`).
        let double_as_sent = digits.parse::<f64>().is_ok_and(|f| f.is_finite() && format!("{f}") == digits);
        prop_assert_eq!(reads_back_exactly(&digits), fits || double_as_sent, "{}", digits);
    }

    #[test]
    fn an_integer_literal_past_64_bits_is_accepted_only_when_it_comes_back_as_sent(exponent in 20u32..=30, lead in 1u8..=9, tail in 0u64..1000) {
        let round = format!("{lead}{}", "0".repeat(exponent as usize - 1));
        prop_assert!(reads_back_exactly(&round), "{} is held by a double and written back as sent", round);
        let ragged = format!("{lead}{}{tail:03}", "0".repeat(exponent as usize - 4));
        let expected = ragged.parse::<u64>().is_ok() || ragged.parse::<f64>().is_ok_and(|f| format!("{f}") == ragged);
        prop_assert_eq!(reads_back_exactly(&ragged), expected, "{}", ragged);
    }

    #[test]
    fn an_accepted_number_is_written_back_as_the_digits_it_was_sent_with(literal in "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?") {
        if reads_back_exactly(&literal) {
            let value: Value = serde_json::from_str(&literal).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let written = serde_json::to_string(&value).map_err(|e| TestCaseError::fail(e.to_string()))?;
            // Independent of the implementation: the significant digits agree.
            let digits = |s: &str| -> String {
                let mantissa = s.trim_start_matches('-').split(['e', 'E']).next().unwrap_or("").replace('.', "");
                mantissa.trim_start_matches('0').trim_end_matches('0').to_owned()
            };
            prop_assert_eq!(digits(&literal), digits(&written), "{} was written as {}", literal, written);
        }
    }

    #[test]
    fn nesting_is_refused_exactly_past_the_limit(depth in 1usize..140) {
        let body = format!("{{\"m\":{}0{}}}", "[".repeat(depth), "]".repeat(depth));
        prop_assert_eq!(check_body(body.as_bytes()).is_ok(), depth < MAX_DEPTH);
    }
}
