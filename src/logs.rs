//! Logging: one filter (`KVFS_LOG`, env-filter syntax), text or JSON lines on stderr, and
//! verbosity changed at run time without a restart: SIGUSR1 raises it one step (the startup
//! filter, then debug, then trace), SIGUSR2 returns to the startup filter.
//!
//! Secret values never reach a log line whatever the level: they live in a type whose Debug
//! is redacted, and azure_core's debug feature (which logs bodies) is never turned on.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// kvfs at info; the SDK logs every request at info, which is ours to say once, at warn.
pub const DEFAULT_FILTER: &str = "info,azure_core=warn,azure_identity=warn,typespec_client_core=warn,azure_security_keyvault_secrets=warn";

/// The steps SIGUSR1 climbs after the startup filter. The HTTP and TLS crates stay at info:
/// at debug they would print headers, and a bearer token is a header.
const STEPS: [&str; 2] = [
    "debug,azure_core=info,azure_identity=info,typespec_client_core=info,azure_security_keyvault_secrets=info,hyper=info,hyper_util=info,h2=info,rustls=info,reqwest=info",
    "trace,azure_core=info,azure_identity=info,typespec_client_core=info,azure_security_keyvault_secrets=info,hyper=info,hyper_util=info,h2=info,rustls=info,reqwest=info",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

struct Control {
    handle: reload::Handle<EnvFilter, Registry>,
    startup: String,
    step: std::sync::Mutex<usize>,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Installs the global subscriber. The filter is `KVFS_LOG` when set and valid, else the
/// default; an invalid `KVFS_LOG` is reported once logging works.
pub fn init(format: LogFormat) {
    let from_env = std::env::var("KVFS_LOG").ok();
    let (filter, startup, invalid) = match from_env.as_deref().map(EnvFilter::try_new) {
        Some(Ok(filter)) => (filter, from_env.clone().unwrap_or_default(), None),
        Some(Err(e)) => (
            EnvFilter::new(DEFAULT_FILTER),
            DEFAULT_FILTER.to_owned(),
            Some(e),
        ),
        None => (
            EnvFilter::new(DEFAULT_FILTER),
            DEFAULT_FILTER.to_owned(),
            None,
        ),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // Colour codes only for a terminal: not in the journal or the fstab helper's log file.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
    };
    if installed.is_ok() {
        let _ = CONTROL.set(Control {
            handle,
            startup,
            step: std::sync::Mutex::new(0),
        });
    }
    if let Some(e) = invalid {
        tracing::warn!(error = %e, "KVFS_LOG is not a valid filter; using the default");
    }
}

/// The filter for `step` (0 is the startup filter).
fn filter_for(startup: &str, step: usize) -> &str {
    match step.checked_sub(1).and_then(|i| STEPS.get(i)) {
        Some(filter) => filter,
        None => startup,
    }
}

/// Applies SIGUSR1 (one step more verbose) and SIGUSR2 (back to the startup filter) for the
/// life of the process. Without signal handlers, verbosity simply stays.
/// The handlers are installed when this is called (inside the runtime), not when the returned
/// future first runs: a SIGUSR1 arriving in between would otherwise end the process.
pub fn follow_signals() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
    );
    async move {
        let (Ok(up), Ok(reset)) = handlers else {
            tracing::warn!(
                "cannot handle SIGUSR1/SIGUSR2: log verbosity cannot change at run time"
            );
            return;
        };
        follow(up, reset).await;
    }
}

async fn follow(mut up: tokio::signal::unix::Signal, mut reset: tokio::signal::unix::Signal) {
    loop {
        let raise = tokio::select! {
            _ = up.recv() => true,
            _ = reset.recv() => false,
        };
        set_step(|step| {
            if raise {
                (step + 1).min(STEPS.len())
            } else {
                0
            }
        });
    }
}

fn set_step(next: impl FnOnce(usize) -> usize) {
    let Some(control) = CONTROL.get() else {
        return;
    };
    let filter = {
        let mut step = control
            .step
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *step = next(*step);
        filter_for(&control.startup, *step).to_owned()
    };
    match control.handle.reload(EnvFilter::new(&filter)) {
        Ok(()) => tracing::info!(filter = %filter, "log filter changed"),
        Err(e) => tracing::warn!(error = %e, "cannot change the log filter"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_climb_then_stop_and_every_filter_parses() {
        assert_eq!(filter_for("info", 0), "info");
        assert_eq!(filter_for("info", 1), STEPS[0]);
        assert_eq!(filter_for("info", 2), STEPS[1]);
        assert_eq!(
            filter_for("info", 3),
            "info",
            "past the last step: the startup filter"
        );
        for filter in [DEFAULT_FILTER, STEPS[0], STEPS[1]] {
            assert!(EnvFilter::try_new(filter).is_ok(), "{filter}");
        }
    }

    #[test]
    fn no_step_lets_http_crates_log_headers() {
        for step in STEPS {
            for noisy in [
                "hyper=info",
                "reqwest=info",
                "rustls=info",
                "azure_core=info",
            ] {
                assert!(step.contains(noisy), "{step} lacks {noisy}");
            }
        }
    }
}
