//! Diagnostics on standard error through `tracing`: warnings read
//! `sifrun: warning: …` as they always did; `-v` adds the launcher's set-up
//! phases with their durations, `-vv` its debug events (the plan, …);
//! `SIFRUN_LOG` (an `EnvFilter`, e.g. `launcher=debug`) overrides both.

use std::fmt;
use std::sync::OnceLock;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Registry, prelude::*, reload};

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The filter for `verbosity` (the count of `-v`).
fn filter(verbosity: u8) -> EnvFilter {
    EnvFilter::new(match verbosity {
        0 => "warn",
        1 => "warn,launcher=info",
        2 => "warn,launcher=debug",
        _ => "debug",
    })
}

/// One line per event, prefixed like sifrun's other messages.
struct Lines;

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        match *meta.level() {
            Level::ERROR => write!(w, "sifrun: error: ")?,
            Level::WARN => write!(w, "sifrun: warning: ")?,
            level => write!(
                w,
                "sifrun: {} {}: ",
                level.as_str().to_ascii_lowercase(),
                meta.target()
            )?,
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Installs the subscriber: `SIFRUN_LOG` when set, else `verbosity`.
pub fn init(verbosity: u8) {
    let f = EnvFilter::try_from_env("SIFRUN_LOG").unwrap_or_else(|_| filter(verbosity));
    let (layer, handle) = reload::Layer::new(f);
    let _ = FILTER.set(handle);
    tracing_subscriber::registry()
        .with(layer)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .event_format(Lines),
        )
        .init();
}

/// Shows at least what `verbosity` shows (a Slurm step's holder asked to
/// be verbose), unless `SIFRUN_LOG` chose.
pub fn at_least(verbosity: u8) {
    if std::env::var_os("SIFRUN_LOG").is_some() || verbosity == 0 {
        return;
    }
    if let Some(h) = FILTER.get() {
        let _ = h.reload(filter(verbosity));
    }
}
