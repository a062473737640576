//! A small aggregate the suites use: a bank account with a balance that cannot go negative.

use serde::{Deserialize, Serialize};
use tributary_core::Aggregate;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub opened: bool,
    pub balance: i64,
    pub deposits: u64,
}

#[derive(Clone, Debug)]
pub enum AccountCommand {
    Open,
    Deposit(i64),
    Withdraw(i64),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AccountEvent {
    Opened,
    Deposited { amount: i64 },
    Withdrawn { amount: i64 },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
    #[error("amounts must be positive")]
    NotPositive,
    #[error("insufficient funds: balance {balance}, asked {asked}")]
    InsufficientFunds { balance: i64, asked: i64 },
}

impl Aggregate for Account {
    const TYPE: &'static str = "Account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open if self.opened => Err(AccountError::AlreadyOpen),
            AccountCommand::Open => Ok(vec![AccountEvent::Opened]),
            _ if !self.opened => Err(AccountError::NotOpen),
            AccountCommand::Deposit(amount) | AccountCommand::Withdraw(amount) if amount <= 0 => {
                Err(AccountError::NotPositive)
            }
            AccountCommand::Deposit(amount) => Ok(vec![AccountEvent::Deposited { amount }]),
            AccountCommand::Withdraw(asked) if asked > self.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                    asked,
                })
            }
            AccountCommand::Withdraw(amount) => Ok(vec![AccountEvent::Withdrawn { amount }]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened => self.opened = true,
            AccountEvent::Deposited { amount } => {
                self.balance += amount;
                self.deposits += 1;
            }
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::given;

    #[test]
    fn deposits_need_an_open_account() {
        given::<Account>(vec![])
            .when(AccountCommand::Deposit(5))
            .then_expect_error();
        given::<Account>(vec![AccountEvent::Opened])
            .when(AccountCommand::Deposit(5))
            .then_expect(vec![AccountEvent::Deposited { amount: 5 }]);
    }

    #[test]
    fn withdrawals_cannot_overdraw() {
        let err = given::<Account>(vec![
            AccountEvent::Opened,
            AccountEvent::Deposited { amount: 3 },
        ])
        .when(AccountCommand::Withdraw(4))
        .then_expect_error();
        assert_eq!(
            err,
            AccountError::InsufficientFunds {
                balance: 3,
                asked: 4
            }
        );
    }

    #[test]
    #[should_panic(expected = "other events than expected")]
    fn then_expect_fails_on_different_events() {
        given::<Account>(vec![AccountEvent::Opened])
            .when(AccountCommand::Deposit(5))
            .then_expect(vec![AccountEvent::Deposited { amount: 6 }]);
    }
}
