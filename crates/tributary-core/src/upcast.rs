//! Upcasting: transforms registered by `(event type, schema version)` and applied on read, so
//! events written in an old shape stay readable after the shape changes.

use std::collections::HashMap;
use std::sync::Arc;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::payload::Payload;

/// The mutable view of an event an upcaster works on. Changing `event_type` renames the event.
#[derive(Debug)]
pub struct UpcastEvent {
    pub event_type: String,
    pub data: serde_json::Value,
}

type Transform = Arc<dyn Fn(&mut UpcastEvent) -> Result<()> + Send + Sync>;

/// A registry of upcasters. Each one raises an event type from one schema version to the next.
#[derive(Clone, Default)]
pub struct Upcasters {
    transforms: HashMap<(String, u32), Transform>,
    latest: HashMap<String, u32>,
}

impl Upcasters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `transform` for events of `event_type` at schema version `from`: it turns them
    /// into version `from + 1`. Chains apply one step at a time until no upcaster matches.
    ///
    /// # Panics
    /// When an upcaster for the same `(event_type, from)` is already registered or `from` is 0:
    /// both are programming errors found at start-up.
    pub fn register(
        mut self,
        event_type: &str,
        from: u32,
        transform: impl Fn(&mut UpcastEvent) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        assert!(from >= 1, "schema versions start at 1");
        let previous = self
            .transforms
            .insert((event_type.to_owned(), from), Arc::new(transform));
        assert!(
            previous.is_none(),
            "two upcasters registered for {event_type} version {from}"
        );
        let latest = self.latest.entry(event_type.to_owned()).or_insert(1);
        *latest = (*latest).max(from + 1);
        self
    }

    /// The schema version new events of `event_type` are written with.
    pub fn latest_version(&self, event_type: &str) -> u32 {
        self.latest.get(event_type).copied().unwrap_or(1)
    }

    pub fn is_empty(&self) -> bool {
        self.transforms.is_empty()
    }

    /// Raises `envelope` to the newest shape its upcasters know.
    ///
    /// # Errors
    /// [`Error::Decode`] when an upcaster fails or produces something that is not JSON.
    pub fn upcast(&self, mut envelope: Envelope) -> Result<Envelope> {
        if self.transforms.is_empty() {
            return Ok(envelope);
        }
        let mut current: Option<UpcastEvent> = None;
        let mut version = envelope.schema_version;
        loop {
            let ty = current
                .as_ref()
                .map_or(envelope.event_type.as_str(), |c| c.event_type.as_str());
            let Some(transform) = self.transforms.get(&(ty.to_owned(), version)) else {
                break;
            };
            let event = match current.as_mut() {
                Some(event) => event,
                None => current.insert(UpcastEvent {
                    event_type: envelope.event_type.clone(),
                    data: envelope.data.decode()?,
                }),
            };
            transform(event).map_err(|e| {
                Error::decode(
                    format!("event {} ({} v{version})", envelope.id, envelope.event_type),
                    format!("upcaster failed: {e}"),
                )
            })?;
            version += 1;
        }
        if let Some(event) = current {
            envelope.event_type = event.event_type;
            envelope.data = Payload::from_value(&event.data)?;
            envelope.schema_version = version;
        }
        Ok(envelope)
    }
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upcasters")
            .field("latest", &self.latest)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn old_event() -> Envelope {
        Envelope::new(
            "test",
            "CustomerRegistered",
            Payload::from_value(&json!({"name": "Acme Corp"})).unwrap(),
        )
    }

    fn upcasters() -> Upcasters {
        Upcasters::new()
            .register("CustomerRegistered", 1, |e| {
                let name = e.data["name"].take();
                e.data = json!({"legal_name": name});
                Ok(())
            })
            .register("CustomerRegistered", 2, |e| {
                e.event_type = "CustomerCreated".into();
                e.data["credit_limit"] = json!(0);
                Ok(())
            })
    }

    #[test]
    fn applies_a_chain_of_upcasters_in_version_order() {
        let up = upcasters();
        let e = up.upcast(old_event()).unwrap();
        assert_eq!(e.event_type, "CustomerCreated");
        assert_eq!(e.schema_version, 3);
        assert_eq!(
            e.data.to_value(),
            json!({"legal_name": "Acme Corp", "credit_limit": 0})
        );
        assert_eq!(up.latest_version("CustomerRegistered"), 3);
        assert_eq!(up.latest_version("Other"), 1);
    }

    #[test]
    fn leaves_current_events_alone() {
        let up = upcasters();
        let current = old_event().with_schema_version(3);
        assert_eq!(up.upcast(current.clone()).unwrap(), current);
    }

    #[test]
    fn a_failing_upcaster_is_a_decode_error() {
        let up = Upcasters::new().register("CustomerRegistered", 1, |_| Err(Error::invalid("no")));
        assert!(matches!(up.upcast(old_event()), Err(Error::Decode { .. })));
    }
}
