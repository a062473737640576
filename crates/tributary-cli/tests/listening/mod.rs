//! A `tributary` process that serves HTTP (`serve`, `console`) on a port the system picked:
//! its first line on stdout names the address. Killed when dropped, so that a failing test
//! leaves no server behind.

#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct Listening {
    child: Child,
    /// `http://127.0.0.1:<port>`, as the process printed it.
    pub base: String,
}

impl Listening {
    /// Runs `tributary args…` (which must include `--listen 127.0.0.1:0`).
    pub fn start(args: &[&str]) -> Self {
        Self::spawn(Command::new(env!("CARGO_BIN_EXE_tributary")).args(args))
    }

    /// Runs `command` (a `tributary` command line with its environment) and waits for its
    /// "listening on" line; its stderr is inherited, so a failure shows its log.
    pub fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("the server starts");
        let line = BufReader::new(child.stdout.take().expect("stdout"))
            .lines()
            .next()
            .expect("a line")
            .expect("readable");
        let Some(base) = line.strip_prefix("listening on ") else {
            let _ = child.kill();
            panic!("expected \"listening on …\", got {line:?}");
        };
        Self {
            base: base.to_owned(),
            child,
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
