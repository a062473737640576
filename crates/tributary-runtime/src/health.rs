//! What a long-running task reports about itself, for `/health` endpoints and logs.

use std::sync::{Arc, Mutex};

/// The state of one component; as JSON `{"state": "degraded", "reason": "…"}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum HealthState {
    Starting,
    /// Working normally.
    Running,
    /// Healthy, waiting for another instance's lease.
    Standby,
    /// Retrying after an error (the message says which).
    Degraded(String),
    /// Stopped by an error that retrying cannot fix (the task's `run` returned it).
    Failed(String),
    Stopped,
}

/// A shared, cheaply cloned health cell.
#[derive(Clone, Debug)]
pub struct Health {
    name: Arc<str>,
    state: Arc<Mutex<HealthState>>,
}

impl Health {
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            state: Arc::new(Mutex::new(HealthState::Starting)),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn set(&self, state: HealthState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    pub fn get(&self) -> HealthState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Running or standing by.
    pub fn is_ok(&self) -> bool {
        matches!(self.get(), HealthState::Running | HealthState::Standby)
    }
}

#[cfg(test)]
mod tests {
    use super::HealthState;

    #[test]
    fn a_state_is_json_with_its_reason() {
        let json = |s: HealthState| serde_json::to_value(s).unwrap();
        assert_eq!(
            json(HealthState::Running),
            serde_json::json!({"state": "running"})
        );
        assert_eq!(
            json(HealthState::Degraded("broker down".into())),
            serde_json::json!({"state": "degraded", "reason": "broker down"})
        );
    }
}
