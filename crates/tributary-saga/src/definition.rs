//! Defining a saga: typed data and an ordered list of steps, each compensatable, the pivot or
//! retriable, in that order.
//!
//! The order is the saga literature's (Garcia-Molina and Salem; Richardson's *Microservices
//! Patterns*): steps that can be undone come first, then at most one pivot (the point of no
//! return), then steps that cannot fail for good and are retried until they succeed. The
//! builder is a typestate, so a compensatable step after the pivot, a retriable step before
//! it, or a second pivot does not compile:
//!
//! ```compile_fail
//! # use tributary_saga::{SagaDefinition, Step, Compensation};
//! # use tributary_core::Topic;
//! # fn f(t: Topic) -> Result<(), tributary_core::Error> {
//! SagaDefinition::<u32>::builder("Broken")?
//!     .pivot(Step::send("approve", t.clone(), |_| unreachable!()))
//!     // error: no method `compensatable` once the pivot is declared
//!     .compensatable(
//!         Step::send("reserve", t.clone(), |_| unreachable!()),
//!         Compensation::send(t, |_| unreachable!()),
//!     );
//! # Ok(()) }
//! ```
//!
//! ```compile_fail
//! # use tributary_saga::{SagaDefinition, Step};
//! # use tributary_core::Topic;
//! # fn f(t: Topic) -> Result<(), tributary_core::Error> {
//! SagaDefinition::<u32>::builder("Broken")?
//!     // error: no method `retriable` before the pivot
//!     .retriable(Step::send("notify", t, |_| unreachable!()));
//! # Ok(()) }
//! ```
//!
//! ```compile_fail
//! # use tributary_saga::{SagaDefinition, Step};
//! # use tributary_core::Topic;
//! # fn f(t: Topic) -> Result<(), tributary_core::Error> {
//! SagaDefinition::<u32>::builder("Broken")?
//!     .pivot(Step::send("approve", t.clone(), |_| unreachable!()))
//!     // error: at most one pivot
//!     .pivot(Step::send("approve-again", t, |_| unreachable!()));
//! # Ok(()) }
//! ```
//!
//! The valid order compiles:
//!
//! ```
//! # use tributary_saga::{Command, Compensation, SagaDefinition, Step};
//! # use tributary_core::Topic;
//! # fn f() -> Result<(), tributary_core::Error> {
//! let customers = Topic::new("CustomerCommands")?;
//! let saga = SagaDefinition::<u32>::builder("CreateOrder")?
//!     .compensatable(
//!         Step::send("reserve-credit", customers.clone(), |n: &u32| Command::new("ReserveCredit", n)),
//!         Compensation::send(customers.clone(), |n: &u32| Command::new("ReleaseCredit", n)),
//!     )
//!     .pivot(Step::local("approve", |n, _unit| Box::pin(async move { *n += 1; Ok(()) })))
//!     .retriable(Step::send("notify", customers, |n: &u32| Command::new("Notify", n)))
//!     .build();
//! assert_eq!(saga.steps().len(), 3);
//! # Ok(()) }
//! ```

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tributary_core::{BoxFuture, Error, GroupName, Payload, Result, Topic, UnitOfWork};

/// What saga data must be: stored as JSON in the saga instance between steps.
pub trait SagaData: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> SagaData for T {}

/// A command a step sends to a participant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub command_type: String,
    pub payload: Payload,
}

impl Command {
    /// # Errors
    /// [`Error::InvalidInput`] when `payload` does not serialize as JSON.
    pub fn new<T: Serialize + ?Sized>(
        command_type: impl Into<String>,
        payload: &T,
    ) -> Result<Self> {
        Ok(Self {
            command_type: command_type.into(),
            payload: Payload::from_value(payload)?,
        })
    }
}

/// Why a local step (or local compensation) did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The step failed for a business reason: the saga compensates (or, for a retriable
    /// step, tries again later).
    #[error("{0}")]
    Failed(String),
    /// The database failed: the orchestrator's unit is rolled back and run again, as any
    /// unit whose store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

impl LocalError {
    pub fn failed(reason: impl Into<String>) -> Self {
        LocalError::Failed(reason.into())
    }
}

pub(crate) type MakeFn<D> = Arc<dyn Fn(&D) -> Result<Command> + Send + Sync>;
pub(crate) type LocalFn<D> = Arc<
    dyn for<'a> Fn(&'a mut D, &'a mut dyn UnitOfWork) -> BoxFuture<'a, Result<(), LocalError>>
        + Send
        + Sync,
>;
pub(crate) type ReplyFn<D> = Arc<dyn Fn(&mut D, &Payload) -> Result<()> + Send + Sync>;

/// What a step or a compensation does.
pub(crate) enum Action<D> {
    /// Sends a command to a participant on `topic` and waits for its reply.
    Send { topic: Topic, make: MakeFn<D> },
    /// Runs in the orchestrator's own unit of work.
    Local(LocalFn<D>),
}

impl<D> Clone for Action<D> {
    fn clone(&self) -> Self {
        match self {
            Action::Send { topic, make } => Action::Send {
                topic: topic.clone(),
                make: make.clone(),
            },
            Action::Local(f) => Action::Local(f.clone()),
        }
    }
}

/// One step of a saga: a command to a participant (with an optional reply handler) or a local
/// action, and an optional deadline for its reply.
pub struct Step<D> {
    pub(crate) name: String,
    pub(crate) action: Action<D>,
    pub(crate) on_reply: Option<ReplyFn<D>>,
    pub(crate) deadline: Option<Duration>,
}

impl<D: SagaData> Step<D> {
    /// A step that sends the command `make` builds from the saga data to `topic`.
    pub fn send(
        name: impl Into<String>,
        topic: Topic,
        make: impl Fn(&D) -> Result<Command> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            action: Action::Send {
                topic,
                make: Arc::new(make),
            },
            on_reply: None,
            deadline: None,
        }
    }

    /// A step that runs `f` in the orchestrator's unit of work (the same unit that saves the
    /// saga's state), e.g. approving the order in the order service's own database.
    pub fn local<F>(name: impl Into<String>, f: F) -> Self
    where
        F: for<'a> Fn(&'a mut D, &'a mut dyn UnitOfWork) -> BoxFuture<'a, Result<(), LocalError>>
            + Send
            + Sync
            + 'static,
    {
        Self {
            name: name.into(),
            action: Action::Local(Arc::new(f)),
            on_reply: None,
            deadline: None,
        }
    }

    /// Updates the saga data from a success reply's data, decoded as `R`. A reply whose data
    /// does not decode counts as a failure of the step.
    pub fn on_reply<R: DeserializeOwned>(
        mut self,
        f: impl Fn(&mut D, R) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.on_reply = Some(Arc::new(move |data: &mut D, reply: &Payload| {
            f(data, reply.decode::<R>()?)
        }));
        self
    }

    /// How long the step waits for its reply (it replaces the orchestrator's default). A
    /// compensatable step whose deadline passes is compensated with the steps before it; a
    /// pivot or retriable step sends its command again.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// How a compensatable step is undone: a command to the participant, or a local action.
pub struct Compensation<D> {
    pub(crate) action: Action<D>,
}

impl<D: SagaData> Compensation<D> {
    pub fn send(
        topic: Topic,
        make: impl Fn(&D) -> Result<Command> + Send + Sync + 'static,
    ) -> Self {
        Self {
            action: Action::Send {
                topic,
                make: Arc::new(make),
            },
        }
    }

    pub fn local<F>(f: F) -> Self
    where
        F: for<'a> Fn(&'a mut D, &'a mut dyn UnitOfWork) -> BoxFuture<'a, Result<(), LocalError>>
            + Send
            + Sync
            + 'static,
    {
        Self {
            action: Action::Local(Arc::new(f)),
        }
    }
}

/// The kind of a step, as the saga literature names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Can be undone: it has a compensation.
    Compensatable,
    /// The point of no return: once it succeeded the saga goes forward only.
    Pivot,
    /// After the pivot: retried until it succeeds, never compensated.
    Retriable,
}

/// A step with its kind and, for a compensatable step, its compensation.
pub struct DefinedStep<D> {
    pub(crate) step: Step<D>,
    pub(crate) kind: StepKind,
    pub(crate) compensation: Option<Compensation<D>>,
}

impl<D> DefinedStep<D> {
    pub fn name(&self) -> &str {
        &self.step.name
    }
    pub fn kind(&self) -> StepKind {
        self.kind
    }
}

/// A saga type: its name and its steps in order. Build one with [`SagaDefinition::builder`].
pub struct SagaDefinition<D> {
    pub(crate) saga_type: String,
    pub(crate) steps: Vec<DefinedStep<D>>,
    pub(crate) reply_topic: Topic,
    pub(crate) group: GroupName,
    /// How long a saga may run in all (see [`SagaBuilder::with_saga_deadline`]).
    pub(crate) deadline: Option<std::time::Duration>,
}

impl<D: SagaData> SagaDefinition<D> {
    /// Starts the definition of the saga type `saga_type` (a name of up to 48 ASCII letters,
    /// digits, `_` or `-`: replies come back on the topic `<saga_type>-replies`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a name that cannot make a topic name.
    pub fn builder(saga_type: &str) -> Result<SagaBuilder<D, BeforePivot>> {
        if saga_type.len() > 48 {
            return Err(Error::invalid(format!(
                "saga type {saga_type:?} is longer than 48 characters"
            )));
        }
        Ok(SagaBuilder {
            saga_type: saga_type.to_owned(),
            reply_topic: reply_topic(saga_type)?,
            group: GroupName::new(format!("saga-{saga_type}"))?,
            steps: Vec::new(),
            deadline: None,
            _order: PhantomData,
        })
    }
}

impl<D> SagaDefinition<D> {
    pub fn saga_type(&self) -> &str {
        &self.saga_type
    }
    pub fn steps(&self) -> &[DefinedStep<D>] {
        &self.steps
    }
    /// The topic participants reply on.
    pub fn reply_topic(&self) -> &Topic {
        &self.reply_topic
    }
    /// The orchestrator's consumer group for replies.
    pub fn group(&self) -> &GroupName {
        &self.group
    }
    /// The index of the pivot step, if there is one.
    pub fn pivot(&self) -> Option<usize> {
        self.steps.iter().position(|s| s.kind == StepKind::Pivot)
    }
}

/// The topic on which participants reply to the commands of saga type `saga_type`.
///
/// # Errors
/// [`Error::InvalidInput`] for a saga type that cannot make a topic name.
pub fn reply_topic(saga_type: &str) -> Result<Topic> {
    Topic::new(format!("{saga_type}-replies"))
}

/// Typestate: no pivot declared yet (compensatable steps and the pivot may follow).
pub struct BeforePivot;
/// Typestate: the pivot is declared (only retriable steps may follow).
pub struct AfterPivot;

/// Builds a [`SagaDefinition`]; the type parameter `O` tracks whether the pivot was declared,
/// so that only a valid order of steps compiles (see the module documentation).
pub struct SagaBuilder<D, O> {
    saga_type: String,
    reply_topic: Topic,
    group: GroupName,
    steps: Vec<DefinedStep<D>>,
    deadline: Option<std::time::Duration>,
    _order: PhantomData<O>,
}

impl<D: SagaData> SagaBuilder<D, BeforePivot> {
    /// A step that can be undone by `compensation`.
    pub fn compensatable(mut self, step: Step<D>, compensation: Compensation<D>) -> Self {
        self.steps.push(DefinedStep {
            step,
            kind: StepKind::Compensatable,
            compensation: Some(compensation),
        });
        self
    }

    /// The point of no return. If it fails, the compensatable steps before it are undone;
    /// once it succeeded, only retriable steps follow.
    pub fn pivot(mut self, step: Step<D>) -> SagaBuilder<D, AfterPivot> {
        self.steps.push(DefinedStep {
            step,
            kind: StepKind::Pivot,
            compensation: None,
        });
        SagaBuilder {
            saga_type: self.saga_type,
            reply_topic: self.reply_topic,
            group: self.group,
            steps: self.steps,
            deadline: self.deadline,
            _order: PhantomData,
        }
    }
}

impl<D: SagaData> SagaBuilder<D, AfterPivot> {
    /// A step after the pivot, retried (with backoff) until it succeeds.
    pub fn retriable(mut self, step: Step<D>) -> Self {
        self.steps.push(DefinedStep {
            step,
            kind: StepKind::Retriable,
            compensation: None,
        });
        self
    }
}

impl<D: SagaData, O> SagaBuilder<D, O> {
    /// A deadline for the saga as a whole, counted from its start and stored with it. A saga
    /// still before its pivot when it passes is compensated, as an operator's cancel would;
    /// one at or past its pivot can only go forward, so the deadline is recorded in its
    /// timeline and nothing else changes. A saga that ends first cancels it.
    pub fn with_saga_deadline(mut self, deadline: std::time::Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    pub fn build(self) -> SagaDefinition<D> {
        SagaDefinition {
            saga_type: self.saga_type,
            steps: self.steps,
            reply_topic: self.reply_topic,
            group: self.group,
            deadline: self.deadline,
        }
    }
}
