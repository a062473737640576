//! Given/when/then tests for aggregates: past events, a command, the expected outcome.

use std::fmt::Debug;

use tributary_core::{Aggregate, encode_event};

/// Starts a test with the events that already happened.
pub fn given<A: Aggregate>(events: Vec<A::Event>) -> AggregateFixture<A> {
    let mut state = A::default();
    for e in &events {
        state.apply(e);
    }
    AggregateFixture { state }
}

/// An aggregate rebuilt from past events.
pub struct AggregateFixture<A> {
    state: A,
}

impl<A: Aggregate> AggregateFixture<A> {
    /// Runs `command` against the state.
    pub fn when(self, command: A::Command) -> AggregateOutcome<A> {
        let result = self.state.handle(command);
        AggregateOutcome { result }
    }

    pub fn state(&self) -> &A {
        &self.state
    }
}

/// What the command did.
pub struct AggregateOutcome<A: Aggregate> {
    result: Result<Vec<A::Event>, A::Error>,
}

fn to_json<E: serde::Serialize>(events: &[E]) -> Vec<serde_json::Value> {
    events
        .iter()
        .map(|e| {
            let (event_type, data) = encode_event(e)
                .unwrap_or_else(|err| panic!("event does not encode as an envelope: {err}"));
            serde_json::json!({"type": event_type, "data": data.to_value()})
        })
        .collect()
}

impl<A: Aggregate> AggregateOutcome<A>
where
    A::Error: Debug,
{
    /// Asserts the command succeeded with exactly `expected` (compared in their JSON form, as
    /// they would be stored).
    #[track_caller]
    pub fn then_expect(self, expected: Vec<A::Event>) {
        match self.result {
            Ok(events) => assert_eq!(
                to_json(&events),
                to_json(&expected),
                "the command produced other events than expected"
            ),
            Err(e) => panic!("expected events, the command was rejected: {e:?}"),
        }
    }

    /// Asserts the command was rejected and returns the error for further checks.
    #[track_caller]
    pub fn then_expect_error(self) -> A::Error {
        match self.result {
            Ok(events) => panic!(
                "expected a rejection, the command produced {:?}",
                to_json(&events)
            ),
            Err(e) => e,
        }
    }
}
