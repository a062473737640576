//! The saga state machine: what the orchestrator does when a saga starts, a reply arrives, or
//! a deadline or retry timer fires. Every transition runs inside one unit of work, which
//! saves the instance together with the commands it publishes and the deadlines it sets or
//! cancels, so a crash at any point leaves the saga exactly before or after the transition.

use std::sync::Arc;

use tributary_core::{Error, EventId, Result, UnitOfWork, UnitOfWorkExt};

use crate::deadlines::{self, Clock, Deadline, DeadlineOutcome};
use crate::definition::{Action, LocalError, SagaData, SagaDefinition, StepKind};
use crate::instance::{AwaitKind, Awaiting, SAGAS, SagaDeadline, SagaId, SagaInstance, SagaState};
use crate::message::{Outcome, Reply, SagaCommandHeader, command_envelope};
use crate::orchestrator::OrchestratorConfig;

/// Whether the saga can go on at once (a local action succeeded) or waits.
enum Flow {
    Continue,
    Wait,
}

/// What happened to a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReplyOutcome {
    Applied,
    /// Late or duplicate: recorded in the history, nothing else done.
    Ignored,
}

pub(crate) struct Engine<D> {
    pub def: Arc<SagaDefinition<D>>,
    pub config: OrchestratorConfig,
    pub clock: Clock,
}

impl<D: SagaData> Engine<D> {
    fn saga_type(&self) -> &str {
        &self.def.saga_type
    }

    /// Creates the instance and runs forward until the first wait.
    pub async fn start(
        &self,
        unit: &mut dyn UnitOfWork,
        id: SagaId,
        mut data: D,
    ) -> Result<SagaInstance> {
        let now = self.clock.now();
        let mut inst = SagaInstance {
            id,
            saga_type: self.def.saga_type.clone(),
            state: SagaState::Running,
            step: 0,
            step_name: None,
            step_kind: None,
            compensating: false,
            attempt: 1,
            data: serde_json::Value::Null,
            awaiting: None,
            failure: None,
            started_at: now,
            updated_at: now,
            history: Vec::new(),
            saga_deadline: None,
        };
        inst.record(now, None, "started", None, None);
        if let Some(limit) = self.def.deadline {
            let due = now + chrono::Duration::from_std(limit).unwrap_or(chrono::Duration::MAX);
            let message_id = EventId::new();
            let deadline_key = self
                .set_deadline(unit, &inst, message_id, due, AwaitKind::Saga)
                .await?;
            inst.saga_deadline = Some(SagaDeadline {
                message_id,
                due,
                deadline_key,
            });
        }
        self.run_forward(unit, &mut inst, &mut data, None).await?;
        self.save(unit, &mut inst, &data).await?;
        Ok(inst)
    }

    pub async fn load(
        &self,
        unit: &mut dyn UnitOfWork,
        id: &SagaId,
    ) -> Result<Option<(SagaInstance, D)>> {
        let Some(inst) = unit.get_as::<SagaInstance>(SAGAS, id.as_str()).await? else {
            return Ok(None);
        };
        if inst.saga_type != self.def.saga_type {
            return Err(Error::invalid(format!(
                "saga {id} is a {}, not a {}",
                inst.saga_type, self.def.saga_type
            )));
        }
        let data = serde_json::from_value(inst.data.clone())
            .map_err(|e| Error::decode(format!("the data of saga {id}"), e))?;
        Ok(Some((inst, data)))
    }

    pub async fn save(
        &self,
        unit: &mut dyn UnitOfWork,
        inst: &mut SagaInstance,
        data: &D,
    ) -> Result<()> {
        inst.data = serde_json::to_value(data)
            .map_err(|e| Error::invalid(format!("saga data does not serialize: {e}")))?;
        unit.put_as(SAGAS, inst.id.as_str(), inst).await
    }

    /// Handles the reply `reply` (envelope id `reply_id`) to one of the saga's commands.
    pub async fn on_reply(
        &self,
        unit: &mut dyn UnitOfWork,
        inst: &mut SagaInstance,
        data: &mut D,
        reply: &Reply,
        reply_id: &EventId,
    ) -> Result<ReplyOutcome> {
        let now = self.clock.now();
        let expected = matches!(&inst.awaiting, Some(a) if a.what == AwaitKind::Reply
            && a.message_id.to_string() == reply.command_id);
        if !expected {
            inst.record(
                now,
                Some(reply.body.saga.step),
                "reply ignored",
                Some(reply_id),
                Some(format!(
                    "{:?} for command {} which the saga no longer waits for",
                    reply.body.outcome, reply.command_id
                )),
            );
            return Ok(ReplyOutcome::Ignored);
        }
        self.end_wait(unit, inst).await?;
        let cause = Some(reply_id.to_string());
        let step = Some(inst.step);
        match (inst.compensating, &reply.body.outcome) {
            (false, Outcome::Succeeded) => {
                let applied = match &self.def.steps[inst.step].step.on_reply {
                    Some(f) => f(
                        data,
                        &tributary_core::Payload::from_value(&reply.body.data)?,
                    ),
                    None => Ok(()),
                };
                match applied {
                    Ok(()) => {
                        inst.record(now, step, "step succeeded", Some(reply_id), None);
                        inst.step += 1;
                        inst.attempt = 1;
                        self.run_forward(unit, inst, data, cause).await?;
                    }
                    Err(e) => {
                        let reason = format!("the success reply cannot be applied: {e}");
                        inst.record(
                            now,
                            step,
                            "step failed",
                            Some(reply_id),
                            Some(reason.clone()),
                        );
                        self.forward_failed(unit, inst, data, reason, false, cause)
                            .await?;
                    }
                }
            }
            (false, Outcome::Failed) => {
                let reason = reply.body.reason.clone().unwrap_or_else(|| "failed".into());
                inst.record(
                    now,
                    step,
                    "step failed",
                    Some(reply_id),
                    Some(reason.clone()),
                );
                self.forward_failed(unit, inst, data, reason, false, cause)
                    .await?;
            }
            (true, Outcome::Succeeded) => {
                inst.record(now, step, "step compensated", Some(reply_id), None);
                self.compensate_next(unit, inst, data, cause).await?;
            }
            (true, Outcome::Failed) => {
                let reason = reply.body.reason.clone().unwrap_or_else(|| "failed".into());
                inst.record(
                    now,
                    step,
                    "compensation failed",
                    Some(reply_id),
                    Some(reason.clone()),
                );
                self.compensation_failed(unit, inst, reason).await?;
            }
        }
        Ok(ReplyOutcome::Applied)
    }

    /// Handles `deadline`, whose document the caller already deleted in this unit.
    pub async fn on_deadline(
        &self,
        unit: &mut dyn UnitOfWork,
        inst: &mut SagaInstance,
        data: &mut D,
        deadline: &Deadline,
    ) -> Result<DeadlineOutcome> {
        let now = self.clock.now();
        if deadline.what == AwaitKind::Saga {
            let ours = inst
                .saga_deadline
                .as_ref()
                .is_some_and(|d| d.message_id == deadline.message_id);
            if ours && !inst.state.is_final() {
                inst.saga_deadline = None;
                self.saga_deadline_passed(unit, inst, data, deadline.due)
                    .await?;
                return Ok(DeadlineOutcome::Fired);
            }
        }
        let waiting = inst
            .awaiting
            .as_ref()
            .filter(|a| a.what != AwaitKind::Saga && a.message_id == deadline.message_id)
            .map(|a| a.what);
        let Some(what) = waiting else {
            inst.record(
                now,
                Some(inst.step),
                "late deadline ignored",
                Some(&deadline.message_id),
                Some(format!(
                    "due {}, the saga is {}",
                    deadline.due,
                    inst.state.as_str()
                )),
            );
            return Ok(DeadlineOutcome::Ignored);
        };
        inst.awaiting = None;
        let cause = Some(deadline.message_id.to_string());
        let step = Some(inst.step);
        match what {
            AwaitKind::Reply => {
                let reason = format!("no reply before the deadline ({})", deadline.due);
                inst.record(
                    now,
                    step,
                    "deadline passed",
                    Some(&deadline.message_id),
                    None,
                );
                if inst.compensating {
                    self.compensation_failed(unit, inst, reason).await?;
                } else {
                    self.forward_failed(unit, inst, data, reason, true, cause)
                        .await?;
                }
            }
            AwaitKind::Retry => {
                inst.attempt += 1;
                inst.record(
                    now,
                    step,
                    "retrying",
                    Some(&deadline.message_id),
                    Some(format!("attempt {}", inst.attempt)),
                );
                if inst.compensating {
                    if let Flow::Continue = self
                        .run_compensation(unit, inst, data, cause.clone())
                        .await?
                    {
                        self.compensate_next(unit, inst, data, cause).await?;
                    }
                } else if let Flow::Continue =
                    self.run_step(unit, inst, data, cause.clone()).await?
                {
                    self.run_forward(unit, inst, data, cause).await?;
                }
            }
            // A step never waits on the saga's own deadline (handled above).
            AwaitKind::Saga => {}
        }
        Ok(DeadlineOutcome::Fired)
    }

    /// An operator's cancel: ends the current wait and compensates what is done.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the saga finished, already compensates, or is past its
    /// pivot (it can then only go forward).
    pub async fn cancel(
        &self,
        unit: &mut dyn UnitOfWork,
        inst: &mut SagaInstance,
        data: &mut D,
        reason: &str,
    ) -> Result<()> {
        if inst.state != SagaState::Running {
            return Err(Error::invalid(format!(
                "saga {} is {}: only a running saga can be cancelled",
                inst.id,
                inst.state.as_str()
            )));
        }
        let kind = self.def.steps.get(inst.step).map(|s| s.kind);
        if !matches!(kind, Some(StepKind::Compensatable)) {
            return Err(Error::invalid(format!(
                "saga {} is at its pivot or past it: it can only go forward",
                inst.id
            )));
        }
        inst.record(
            self.clock.now(),
            Some(inst.step),
            "cancelled by an operator",
            None,
            Some(reason.to_owned()),
        );
        self.abort(unit, inst, data, format!("cancelled: {reason}"))
            .await
    }

    /// Ends the current wait of a saga before its pivot and compensates what is done (a
    /// cancel, or the saga's own deadline).
    async fn abort(
        &self,
        unit: &mut dyn UnitOfWork,
        inst: &mut SagaInstance,
        data: &mut D,
        reason: String,
    ) -> Result<()> {
        // A command sent and not answered may have happened: it is compensated too.
        let sent = matches!(&inst.awaiting, Some(a) if a.what == AwaitKind::Reply);
        self.end_wait(unit, inst).await?;
        let from = if sent { inst.step + 1 } else { inst.step };
        self.begin_compensation(unit, inst, data, from, reason, None)
            .await
    }

    /// The saga's own deadline passed (`inst.saga_deadline` was taken by the caller): before
    /// the pivot it compensates; while compensating, or at or past the pivot, it can only go
    /// on, and the timeline says the deadline passed.
    async fn saga_deadline_passed(
        &self,
        unit: &mut dyn UnitOfWork,
        inst: &mut SagaInstance,
        data: &mut D,
        due: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        let now = self.clock.now();
        let before_pivot = inst.state == SagaState::Running
            && matches!(
                self.def.steps.get(inst.step).map(|s| s.kind),
                Some(StepKind::Compensatable)
            );
        if before_pivot {
            inst.record(
                now,
                Some(inst.step),
                "saga deadline passed",
                None,
                Some(format!("due {due}; compensating")),
            );
            self.abort(
                unit,
                inst,
                data,
                format!("the saga's deadline ({due}) passed"),
            )
            .await
        } else {
            let why = if inst.compensating {
                "already compensating"
            } else {
                "at or past its pivot, the saga can only go forward"
            };
            inst.record(
                now,
                Some(inst.step),
                "saga deadline passed",
                None,
                Some(format!("due {due}; {why}")),
            );
            Ok(())
        }
    }

    /// An operator's retry: runs the current step (or compensation) again now, also for a
    /// saga that ended in `CompensationFailed`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the saga completed or was compensated.
    pub async fn retry(
        &self,
        unit: &mut dyn UnitOfWork,
        inst: &mut SagaInstance,
        data: &mut D,
    ) -> Result<()> {
        match inst.state {
            SagaState::Completed | SagaState::Compensated => {
                return Err(Error::invalid(format!(
                    "saga {} is {}: nothing to retry",
                    inst.id,
                    inst.state.as_str()
                )));
            }
            SagaState::CompensationFailed => {
                inst.state = SagaState::Compensating;
                inst.attempt = 0;
            }
            SagaState::Running | SagaState::Compensating => {}
        }
        self.end_wait(unit, inst).await?;
        inst.attempt += 1;
        let now = self.clock.now();
        inst.record(
            now,
            Some(inst.step),
            "retried by an operator",
            None,
            Some(format!("attempt {}", inst.attempt)),
        );
        if inst.compensating {
            if let Flow::Continue = self.run_compensation(unit, inst, data, None).await? {
                self.compensate_next(unit, inst, data, None).await?;
            }
        } else if let Flow::Continue = self.run_step(unit, inst, data, None).await? {
            self.run_forward(unit, inst, data, None).await?;
        }
        Ok(())
    }

    /// Runs steps from `inst.step` until one waits, the saga completes, or it fails.
    async fn run_forward(
        &self,
        unit: &mut dyn UnitOfWork,
        inst: &mut SagaInstance,
        data: &mut D,
        cause: Option<String>,
    ) -> Result<()> {
        loop {
            if inst.step >= self.def.steps.len() {
                self.finish(unit, inst, SagaState::Completed).await?;
                return Ok(());
            }
            if let Flow::Wait = self.run_step(unit, inst, data, cause.clone()).await? {
                return Ok(());
            }
        }
    }

    /// Runs the current step once; a local step that succeeds moves `inst.step` on.
    async fn run_step(
        &self,
        unit: &mut dyn UnitOfWork,
        inst: &mut SagaInstance,
        data: &mut D,
        cause: Option<String>,
    ) -> Result<Flow> {
        let defined = &self.def.steps[inst.step];
        inst.step_name = Some(defined.step.name.clone());
        inst.step_kind = Some(defined.kind);
        let action = defined.step.action.clone();
        match self
            .act(unit, inst, data, &action, false, cause.clone())
            .await?
        {
            Acted::Sent => Ok(Flow::Wait),
            Acted::Done => {
                let now = self.clock.now();
                inst.record(
                    now,
                    Some(inst.step),
                    "step succeeded",
                    None,
                    Some("local".into()),
                );
                inst.step += 1;
                inst.attempt = 1;
                Ok(Flow::Continue)
            }
            Acted::Failed(reason) => {
                let now = self.clock.now();
                inst.record(
                    now,
                    Some(inst.step),
                    "step failed",
                    None,
                    Some(reason.clone()),
                );
                self.forward_failed(unit, inst, data, reason, false, cause)
                    .await?;
                Ok(Flow::Wait)
            }
        }
    }

    /// Runs the compensation of the current step once.
    async fn run_compensation(
        &self,
        unit: &mut dyn UnitOfWork,
        inst: &mut SagaInstance,
        data: &mut D,
        cause: Option<String>,
    ) -> Result<Flow> {
        let defined = &self.def.steps[inst.step];
        inst.step_name = Some(defined.step.name.clone());
        inst.step_kind = Some(defined.kind);
        let Some(compensation) = &defined.compensation else {
            return Ok(Flow::Continue);
        };
        let action = compensation.action.clone();
        match self.act(unit, inst, data, &action, true, cause).await? {
            Acted::Sent => Ok(Flow::Wait),
            Acted::Done => {
                let now = self.clock.now();
                inst.record(
                    now,
                    Some(inst.step),
                    "step compensated",
                    None,
                    Some("local".into()),
                );
                Ok(Flow::Continue)
            }
            Acted::Failed(reason) => {
                let now = self.clock.now();
                inst.record(
                    now,
                    Some(inst.step),
                    "compensation failed",
                    None,
                    Some(reason.clone()),
                );
                self.compensation_failed(unit, inst, reason).await?;
                Ok(Flow::Wait)
            }
        }
    }

    /// Runs a local action, or sends a command and sets its deadline.
    async fn act(
        &self,
        unit: &mut dyn UnitOfWork,
        inst: &mut SagaInstance,
        data: &mut D,
        action: &Action<D>,
        compensation: bool,
        cause: Option<String>,
    ) -> Result<Acted> {
        match action {
            Action::Local(f) => match f(data, unit).await {
                Ok(()) => Ok(Acted::Done),
                Err(LocalError::Failed(reason)) => Ok(Acted::Failed(reason)),
                Err(LocalError::Store(e)) => Err(e),
            },
            Action::Send { topic, make } => {
                let command = match make(data) {
                    Ok(c) => c,
                    Err(e) => {
                        return Ok(Acted::Failed(format!("the command cannot be built: {e}")));
                    }
                };
                let defined = &self.def.steps[inst.step];
                let header = SagaCommandHeader {
                    saga_type: self.def.saga_type.clone(),
                    saga_id: inst.id.clone(),
                    step: inst.step,
                    step_name: defined.step.name.clone(),
                    compensation,
                    attempt: inst.attempt,
                    reply_to: self.def.reply_topic.clone(),
                };
                let envelope = command_envelope(&self.config.service, header, &command, cause)?;
                let message_id = envelope.id;
                unit.publish(topic, envelope).await?;
                let now = self.clock.now();
                let wait = defined.step.deadline.or(self.config.step_deadline);
                let (due, deadline_key) = match wait {
                    Some(wait) => {
                        let due =
                            now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
                        let key = self
                            .set_deadline(unit, inst, message_id, due, AwaitKind::Reply)
                            .await?;
                        (Some(due), Some(key))
                    }
                    None => (None, None),
                };
                inst.awaiting = Some(Awaiting {
                    message_id,
                    what: AwaitKind::Reply,
                    due,
                    deadline_key,
                });
                let what = if compensation {
                    "compensation sent"
                } else {
                    "command sent"
                };
                inst.record(
                    now,
                    Some(inst.step),
                    what,
                    Some(&message_id),
                    Some(format!(
                        "{} to {topic} (attempt {})",
                        command.command_type, inst.attempt
                    )),
                );
                Ok(Acted::Sent)
            }
        }
    }

    async fn set_deadline(
        &self,
        unit: &mut dyn UnitOfWork,
        inst: &SagaInstance,
        message_id: EventId,
        due: chrono::DateTime<chrono::Utc>,
        what: AwaitKind,
    ) -> Result<String> {
        let deadline = Deadline {
            key: deadlines::key(due, &message_id),
            saga_id: inst.id.clone(),
            message_id,
            due,
            what,
        };
        deadlines::schedule(unit, self.saga_type(), &deadline).await?;
        Ok(deadline.key)
    }

    /// Ends the current wait, cancelling its deadline in this unit.
    async fn end_wait(&self, unit: &mut dyn UnitOfWork, inst: &mut SagaInstance) -> Result<()> {
        if let Some(Awaiting {
            deadline_key: Some(key),
            ..
        }) = inst.awaiting.take()
        {
            deadlines::cancel(unit, self.saga_type(), &key).await?;
        }
        Ok(())
    }

    /// The current forward step failed (or its deadline passed, `timed_out`).
    async fn forward_failed(
        &self,
        unit: &mut dyn UnitOfWork,
        inst: &mut SagaInstance,
        data: &mut D,
        reason: String,
        timed_out: bool,
        cause: Option<String>,
    ) -> Result<()> {
        match self.def.steps[inst.step].kind {
            // Retriable steps are retried until they succeed. A pivot whose reply did not come
            // is sent again rather than compensated around: it may have happened, and after
            // the pivot the saga cannot go back.
            StepKind::Retriable => self.schedule_retry(unit, inst, reason).await,
            StepKind::Pivot if timed_out => self.schedule_retry(unit, inst, reason).await,
            StepKind::Pivot => {
                self.begin_compensation(unit, inst, data, inst.step, reason, cause)
                    .await
            }
            // A compensatable step whose reply did not come may have happened: it is
            // compensated too (the participant helper makes that safe if it did not).
            StepKind::Compensatable => {
                let from = if timed_out { inst.step + 1 } else { inst.step };
                self.begin_compensation(unit, inst, data, from, reason, cause)
                    .await
            }
        }
    }

    async fn begin_compensation(
        &self,
        unit: &mut dyn UnitOfWork,
        inst: &mut SagaInstance,
        data: &mut D,
        from: usize,
        reason: String,
        cause: Option<String>,
    ) -> Result<()> {
        inst.state = SagaState::Compensating;
        inst.compensating = true;
        inst.failure = Some(reason.clone());
        inst.step = from;
        let now = self.clock.now();
        inst.record(now, None, "compensating", None, Some(reason));
        self.compensate_next(unit, inst, data, cause).await
    }

    /// Compensates the steps before `inst.step`, last first, until one waits.
    async fn compensate_next(
        &self,
        unit: &mut dyn UnitOfWork,
        inst: &mut SagaInstance,
        data: &mut D,
        cause: Option<String>,
    ) -> Result<()> {
        loop {
            if inst.step == 0 {
                self.finish(unit, inst, SagaState::Compensated).await?;
                return Ok(());
            }
            inst.step -= 1;
            inst.attempt = 1;
            if self.def.steps[inst.step].compensation.is_none() {
                continue;
            }
            if let Flow::Wait = self
                .run_compensation(unit, inst, data, cause.clone())
                .await?
            {
                return Ok(());
            }
        }
    }

    async fn compensation_failed(
        &self,
        unit: &mut dyn UnitOfWork,
        inst: &mut SagaInstance,
        reason: String,
    ) -> Result<()> {
        if inst.attempt >= self.config.compensation_attempts {
            inst.failure = Some(reason.clone());
            tracing::error!(
                saga_type = %inst.saga_type,
                saga_id = %inst.id,
                step = inst.step,
                attempts = inst.attempt,
                %reason,
                "saga compensation failed for good: an operator must resolve it"
            );
            self.finish(unit, inst, SagaState::CompensationFailed)
                .await?;
            return Ok(());
        }
        self.schedule_retry(unit, inst, reason).await
    }

    async fn schedule_retry(
        &self,
        unit: &mut dyn UnitOfWork,
        inst: &mut SagaInstance,
        reason: String,
    ) -> Result<()> {
        let delay = self.config.retry_backoff.delay(inst.attempt);
        let now = self.clock.now();
        let due = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        let timer = EventId::new();
        let key = self
            .set_deadline(unit, inst, timer, due, AwaitKind::Retry)
            .await?;
        inst.awaiting = Some(Awaiting {
            message_id: timer,
            what: AwaitKind::Retry,
            due: Some(due),
            deadline_key: Some(key),
        });
        inst.record(
            now,
            Some(inst.step),
            "retry scheduled",
            Some(&timer),
            Some(format!("{reason}; next attempt at {due}")),
        );
        Ok(())
    }

    /// Ends the saga in `state`; its own deadline, if pending, is cancelled in this unit.
    async fn finish(
        &self,
        unit: &mut dyn UnitOfWork,
        inst: &mut SagaInstance,
        state: SagaState,
    ) -> Result<()> {
        inst.state = state;
        inst.awaiting = None;
        if let Some(d) = inst.saga_deadline.take() {
            deadlines::cancel(unit, self.saga_type(), &d.deadline_key).await?;
        }
        let now = self.clock.now();
        inst.record(now, None, state.as_str(), None, None);
        Ok(())
    }
}

enum Acted {
    Sent,
    Done,
    Failed(String),
}
