//! How an error reaches an operator: one line, each cause said once.
//!
//! Library errors often show their source in their own message (`PostgreSQL at h:5432 is
//! unavailable: connection refused`) and also return it as their `source()`, so printing the
//! chain with `{:#}` says the same cause two or three times. Here a cause whose text was
//! already said is left out.

/// `e` and its causes, outermost first, joined by ": ", without repeats.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shows its source in its message and returns it as `source()`, as library errors do.
    #[derive(Debug)]
    struct Outer {
        source: std::io::Error,
    }

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "PostgreSQL at h:1 is unavailable: {}", self.source)
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = anyhow::Error::new(Outer { source: io }).context("connecting the services");
        assert_eq!(
            one_line(&e),
            "connecting the services: PostgreSQL at h:1 is unavailable: connection refused"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&plain), "outer: inner");
    }
}
