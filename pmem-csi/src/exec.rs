//! Running external commands (lvm, ndctl, mount, mkfs, ...) through a [`Runner`].
//!
//! Commands are always an argument vector passed to `execve` (via [`std::process::Command`]);
//! a shell is never involved, so names cannot be interpreted as shell syntax.

use crate::error::{Error, Result};
use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;

/// The outcome of one command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Captured standard output.
    pub stdout: String,
    /// Captured standard error.
    pub stderr: String,
}

impl Output {
    /// A successful output with the given stdout.
    pub fn ok(stdout: &str) -> Self {
        Output {
            code: Some(0),
            stdout: stdout.to_string(),
            stderr: String::new(),
        }
    }

    /// A failed output with the given exit code and stderr.
    pub fn fail(code: i32, stderr: &str) -> Self {
        Output {
            code: Some(code),
            stdout: String::new(),
            stderr: stderr.to_string(),
        }
    }

    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// A program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    /// Program name (looked up in `PATH`) or absolute path.
    pub program: String,
    /// Arguments, passed verbatim.
    pub args: Vec<String>,
}

impl Cmd {
    /// Builds a command from a program and arguments.
    pub fn new<I, S>(program: &str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Cmd {
            program: program.to_string(),
            args: args.into_iter().map(Into::into).collect(),
        }
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.program)?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

/// Runs commands. Implemented by [`SystemRunner`] and, for tests, [`ScriptedRunner`].
pub trait Runner: Send + Sync + fmt::Debug {
    /// Runs the command and returns its output, whatever its exit status.
    fn run(&self, cmd: &Cmd) -> Result<Output>;

    /// Runs the command and returns its stdout, or [`Error::Command`] if it failed.
    fn run_ok(&self, cmd: &Cmd) -> Result<String> {
        let out = self.run(cmd)?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(Error::Command {
                command: cmd.to_string(),
                status: match out.code {
                    Some(c) => format!("exit status {c}"),
                    None => "killed by signal".into(),
                },
                stderr: out.stderr.trim().to_string(),
            })
        }
    }
}

/// Runs real commands with [`std::process::Command`].
#[derive(Debug, Default)]
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(&self, cmd: &Cmd) -> Result<Output> {
        log::debug!("exec: {cmd}");
        let out = std::process::Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| Error::Internal(format!("cannot run {}: {e}", cmd.program)))?;
        let out = Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        if !out.success() {
            log::debug!("exec: {cmd} failed: {:?}: {}", out.code, out.stderr.trim());
        }
        Ok(out)
    }
}

/// A runner for tests: it expects an exact sequence of commands and replays canned outputs.
///
/// An unexpected command is an error (and is recorded), so a test fails when the code under
/// test runs something other than what the script says.
#[derive(Debug, Default)]
pub struct ScriptedRunner {
    script: Mutex<VecDeque<(Cmd, Output)>>,
    log: Mutex<Vec<Cmd>>,
}

impl ScriptedRunner {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an expected command (`"prog arg1 arg2"`, split on whitespace) and its output.
    pub fn expect(&self, cmdline: &str, out: Output) -> &Self {
        let mut it = cmdline.split_whitespace();
        let program = it.next().unwrap_or_default();
        self.script
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((Cmd::new(program, it), out));
        self
    }

    /// Commands run so far.
    pub fn calls(&self) -> Vec<Cmd> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Number of expected commands that were not run.
    pub fn remaining(&self) -> usize {
        self.script.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Runner for ScriptedRunner {
    fn run(&self, cmd: &Cmd) -> Result<Output> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cmd.clone());
        let mut script = self.script.lock().unwrap_or_else(|e| e.into_inner());
        match script.pop_front() {
            Some((want, out)) if want == *cmd => Ok(out),
            Some((want, _)) => Err(Error::Internal(format!(
                "scripted runner: expected `{want}`, got `{cmd}`"
            ))),
            None => Err(Error::Internal(format!(
                "scripted runner: unexpected `{cmd}`"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_runner_passes_arguments_verbatim() {
        // A shell would expand `$HOME` and split on `;`; execve must not.
        let out = SystemRunner
            .run_ok(&Cmd::new("echo", ["$HOME;", "a b"]))
            .unwrap();
        assert_eq!(out, "$HOME; a b\n");
        let err = SystemRunner
            .run_ok(&Cmd::new("false", Vec::<String>::new()))
            .unwrap_err();
        assert!(matches!(err, Error::Command { .. }), "{err:?}");
        assert!(SystemRunner
            .run(&Cmd::new("/nonexistent/prog", ["x"]))
            .is_err());
    }

    #[test]
    fn scripted_runner_checks_sequence() {
        let r = ScriptedRunner::new();
        r.expect("lvs -o x", Output::ok("out"))
            .expect("vgs", Output::fail(5, "bad"));
        assert_eq!(r.run_ok(&Cmd::new("lvs", ["-o", "x"])).unwrap(), "out");
        assert!(r.run_ok(&Cmd::new("lvs", Vec::<String>::new())).is_err());
        assert_eq!(r.remaining(), 0);
        assert!(r.run(&Cmd::new("vgs", Vec::<String>::new())).is_err());
    }
}
