//! Command-line flags. Parsing has no side effects: it produces `MountArgs` and friends, and
//! `run` turns them into a running mount. Every flag also reads an environment variable.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use url::Url;

use crate::access::{OwnerRule, parse_glob, parse_owner_rule};
use crate::audit::{AuditTarget, parse_target};
use crate::auth::AuthMode;
use crate::fs::Rotation;
use crate::logs::LogFormat;
use crate::views::decode::{DecodeRule, Decoding, parse_decode_rule};
use crate::views::names::{Alias, NameMap, parse_alias};

#[derive(Debug, Parser)]
#[command(
    name = "kvfs",
    version,
    about = "Mount an Azure Key Vault as a read-only directory: every secret is a file"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log lines as text or JSON (one object per line). The filter is KVFS_LOG (env-filter
    /// syntax); SIGUSR1 raises verbosity a step, SIGUSR2 restores it.
    #[arg(long, global = true, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text, env = "KVFS_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a vault and serve it until SIGTERM or SIGINT (runs in the foreground).
    Mount(Box<MountArgs>),
    /// Mount a sample vault served by the bundled emulator: no Azure account needed.
    #[cfg(feature = "emulator")]
    Demo(Box<DemoArgs>),
    /// Run the bundled Key Vault emulator alone (tests, benchmarks, other SDKs).
    #[cfg(feature = "emulator")]
    Emulator(EmulatorArgs),
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Empty directory to mount on; a mount left stale by a killed kvfs is cleaned first.
    #[arg(value_name = "MOUNTPOINT", env = "KVFS_MOUNTPOINT")]
    pub mountpoint: PathBuf,

    /// The vault, e.g. https://myvault.vault.azure.net. Repeat it to mount several vaults,
    /// each in a directory named after it (myvault/), with its own cache and request budget.
    #[arg(long, value_name = "URL", env = "KVFS_VAULT_URL", value_delimiter = ' ', required = true, value_parser = parse_vault_url)]
    pub vault_url: Vec<Url>,

    #[command(flatten)]
    pub identity: IdentityArgs,

    #[command(flatten)]
    pub network: NetworkArgs,

    #[command(flatten)]
    pub options: MountOptions,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Identity")]
pub struct IdentityArgs {
    /// How to sign in: auto = workload identity when AZURE_FEDERATED_TOKEN_FILE is set, else managed identity.
    #[arg(long, value_enum, default_value_t = AuthMode::Auto, env = "KVFS_AUTH")]
    pub auth: AuthMode,

    /// User-assigned managed identity by client id (AZURE_CLIENT_ID is used when no id is given).
    #[arg(
        long,
        value_name = "GUID",
        env = "KVFS_CLIENT_ID",
        group = "user_assigned"
    )]
    pub client_id: Option<String>,

    /// User-assigned managed identity by object (principal) id.
    #[arg(
        long,
        value_name = "GUID",
        env = "KVFS_OBJECT_ID",
        group = "user_assigned"
    )]
    pub object_id: Option<String>,

    /// User-assigned managed identity by ARM resource id.
    #[arg(
        long,
        value_name = "ID",
        env = "KVFS_RESOURCE_ID",
        group = "user_assigned"
    )]
    pub resource_id: Option<String>,
}

/// Where Key Vault and the identity endpoint are reached and whom to trust: set by `demo`
/// itself, so only `mount` takes them.
#[derive(Debug, Args)]
pub struct NetworkArgs {
    /// Extra trusted root certificates (PEM), for TLS-inspecting proxies or emulators.
    #[arg(
        long,
        value_name = "PEM",
        env = "KVFS_CA_FILE",
        help_heading = "Network"
    )]
    pub ca_file: Option<PathBuf>,

    /// Send managed-identity token requests here instead of 169.254.169.254 (as other Azure SDKs do).
    #[arg(long, value_name = "URL", env = "AZURE_POD_IDENTITY_AUTHORITY_HOST", value_parser = parse_http_url, help_heading = "Network")]
    pub imds_endpoint: Option<Url>,

    /// Accept a 401 challenge naming another resource than vault.azure.net (emulators only).
    #[arg(
        long,
        env = "KVFS_DISABLE_CHALLENGE_RESOURCE_VERIFICATION",
        help_heading = "Network"
    )]
    pub disable_challenge_resource_verification: bool,
}

#[derive(Debug, Args)]
pub struct MountOptions {
    /// No file operation waits longer than this for Key Vault or the identity endpoint.
    #[arg(long, value_name = "DURATION", default_value = "10s", env = "KVFS_REQUEST_TIMEOUT", value_parser = parse_request_timeout, help_heading = "Network")]
    pub request_timeout: Duration,

    /// Most secrets held in memory at once.
    #[arg(long, value_name = "N", default_value = "1024", env = "KVFS_CACHE_CAPACITY", value_parser = parse_capacity, help_heading = "Cache")]
    pub cache_capacity: NonZeroUsize,

    /// Most bytes of secret values held in memory at once (e.g. 64MiB); with --cache-capacity,
    /// whichever binds first.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", env = "KVFS_CACHE_MAX_BYTES", value_parser = parse_size, help_heading = "Cache")]
    pub cache_max_bytes: usize,

    /// How long a fetched secret is served before it is fetched again.
    #[arg(long, value_name = "DURATION", default_value = "5m", env = "KVFS_CACHE_TTL", value_parser = parse_duration, help_heading = "Cache")]
    pub cache_ttl: Duration,

    /// How long a name Key Vault does not have is known absent: a name missing from a listing
    /// this young costs no request, and new secrets are found within it.
    #[arg(long, value_name = "DURATION", default_value = "30s", env = "KVFS_NEGATIVE_TTL", value_parser = parse_duration, help_heading = "Cache")]
    pub negative_ttl: Duration,

    /// How long the directory listing is served before the vault is listed again.
    #[arg(long, value_name = "DURATION", default_value = "60s", env = "KVFS_LIST_TTL", value_parser = parse_duration, help_heading = "Cache")]
    pub list_ttl: Duration,

    /// While Key Vault or the identity endpoint fails, keep serving cached values this long after
    /// they were last confirmed. 404 and 403 answers are never masked.
    #[arg(long, value_name = "DURATION", default_value = "24h", env = "KVFS_MAX_STALE", value_parser = parse_duration, help_heading = "Cache")]
    pub max_stale: Duration,

    /// How a new version reaches files: new-inode (fastest; a file bind-mounted on its own, as a
    /// Kubernetes subPath, keeps its version) or in-place (bind-mounted files follow rotations;
    /// each open costs a few kernel round trips).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = Rotation::NewInode, env = "KVFS_ROTATION", help_heading = "Cache")]
    pub rotation: Rotation,

    /// Owner of every file (default: the user running kvfs).
    #[arg(
        long,
        value_name = "UID",
        env = "KVFS_UID",
        value_parser = parse_id,
        help_heading = "Permissions"
    )]
    pub uid: Option<u32>,

    /// Group of every file (default: the group running kvfs).
    #[arg(
        long,
        value_name = "GID",
        env = "KVFS_GID",
        value_parser = parse_id,
        help_heading = "Permissions"
    )]
    pub gid: Option<u32>,

    /// Permission bits of every secret file, in octal.
    #[arg(long, value_name = "OCTAL", default_value = "0400", env = "KVFS_FILE_MODE", value_parser = parse_mode, help_heading = "Permissions")]
    pub file_mode: u16,

    /// Permission bits of the mount's directory, in octal.
    #[arg(long, value_name = "OCTAL", default_value = "0500", env = "KVFS_DIR_MODE", value_parser = parse_mode, help_heading = "Permissions")]
    pub dir_mode: u16,

    /// Let users other than the one running kvfs use the mount (permissions still apply).
    #[arg(long, env = "KVFS_ALLOW_OTHER", help_heading = "Permissions")]
    pub allow_other: bool,

    /// Let root use the mount besides the user running kvfs (FUSE's allow_root; others are
    /// refused whatever the modes).
    #[arg(
        long,
        env = "KVFS_ALLOW_ROOT",
        conflicts_with = "allow_other",
        help_heading = "Permissions"
    )]
    pub allow_root: bool,

    /// Owner, group and mode of the secrets whose names match GLOB (case-insensitive), e.g.
    /// 'app-a-*=1001:1001:0400'; repeatable, the first match wins, else --uid/--gid/--file-mode.
    /// `.versions/<name>` follows its secret (directory: x added where r is set).
    #[arg(long, value_name = "GLOB=UID:GID:MODE", env = "KVFS_OWNER", value_delimiter = ' ', value_parser = parse_owner_rule, help_heading = "Permissions")]
    pub owner: Vec<OwnerRule>,

    /// Show only the secrets whose names match GLOB (case-insensitive); repeatable. Others are
    /// never listed, fetched or refreshed, and answer ENOENT.
    #[arg(long, value_name = "GLOB", env = "KVFS_INCLUDE", value_delimiter = ' ', value_parser = parse_glob, help_heading = "Permissions")]
    pub include: Vec<String>,

    /// Hide the secrets whose names match GLOB (case-insensitive); repeatable; wins over
    /// --include.
    #[arg(long, value_name = "GLOB", env = "KVFS_EXCLUDE", value_delimiter = ' ', value_parser = parse_glob, help_heading = "Permissions")]
    pub exclude: Vec<String>,

    /// Serve the secrets whose names match GLOB decoded from base64 or hex (e.g.
    /// 'tls-*=base64'); a value that does not decode is EIO on its file; repeatable, first
    /// match wins.
    #[arg(long, value_name = "GLOB=base64|hex", env = "KVFS_DECODE", value_delimiter = ' ', value_parser = parse_decode_rule, help_heading = "Views")]
    pub decode: Vec<DecodeRule>,

    /// Show the secrets whose names match GLOB and hold a JSON object also as a directory
    /// NAME.d, one file per key, nested objects as subdirectories; repeatable.
    #[arg(long, value_name = "GLOB", env = "KVFS_JSON_KEYS", value_delimiter = ' ', value_parser = parse_glob, help_heading = "Views")]
    pub json_keys: Vec<String>,

    /// Show secret SECRET also as file FILE (e.g. 'DB_PASSWORD=db-password'); repeatable.
    #[arg(long, value_name = "FILE=SECRET", env = "KVFS_ALIAS", value_delimiter = ' ', value_parser = parse_alias, help_heading = "Views")]
    pub alias: Vec<Alias>,

    /// Show every secret also under the names apps use: env gives db-password as DB_PASSWORD
    /// and ConnectionStrings--Main as ConnectionStrings:Main.
    #[arg(
        long,
        value_enum,
        value_name = "MAP",
        env = "KVFS_NAME_MAP",
        help_heading = "Views"
    )]
    pub name_map: Option<NameMap>,

    /// Add MOUNTPOINT/.env: NAME=value lines of the secrets whose names match GLOB, or that
    /// carry the tag KEY (with VALUE) for tag:KEY[=VALUE] (names as --name-map env gives
    /// them), quoted for `set -a; source` and dotenv; repeatable.
    #[arg(long, value_name = "GLOB|tag:KEY[=VALUE]", env = "KVFS_ENV_FILE", value_delimiter = ' ', value_parser = parse_env_rule, help_heading = "Views")]
    pub env_file: Vec<String>,

    /// Append one JSON line per open of a secret (time, secret, version, pid, uid, gid,
    /// command, container) to this file (created 0600), or - for standard output. Turns
    /// zero-message open off: each open and close then costs a kernel round trip.
    #[arg(long, value_name = "PATH|-", env = "KVFS_AUDIT_LOG", value_parser = parse_target, help_heading = "Permissions")]
    pub audit_log: Option<AuditTarget>,

    /// Key Vault requests per second this kvfs may send, all readers and refreshes together
    /// (Key Vault allows 400/s per vault, shared by every node reading it).
    #[arg(long, value_name = "N", default_value = "20", env = "KVFS_MAX_REQUEST_RATE", value_parser = parse_rate, help_heading = "Network")]
    pub max_request_rate: NonZeroU32,

    /// Requests that may go at once above --max-request-rate after a quiet time (a pod start).
    #[arg(long, value_name = "N", default_value = "200", env = "KVFS_MAX_REQUEST_BURST", value_parser = parse_rate, help_heading = "Network")]
    pub max_request_burst: NonZeroU32,

    /// Mount without first checking that a token can be had and the vault listed.
    #[arg(long, env = "KVFS_NO_STARTUP_CHECK", help_heading = "Mount")]
    pub no_startup_check: bool,

    /// On SIGTERM/SIGINT the mount is detached at once; files still open keep being served this
    /// long, or until they are closed. A second signal ends it at once.
    #[arg(long, value_name = "DURATION", default_value = "5s", env = "KVFS_SHUTDOWN_GRACE", value_parser = parse_shutdown_grace, help_heading = "Mount")]
    pub shutdown_grace: Duration,

    /// Serve Prometheus metrics (/metrics) and health probes (/healthz, /readyz) on this
    /// address, e.g. 127.0.0.1:9464 (port 0: any free port, logged). Off when not given.
    #[arg(
        long,
        value_name = "ADDR",
        env = "KVFS_METRICS_ADDR",
        help_heading = "Monitoring"
    )]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Add a `secret` label (the secret's name, never its value) to the per-secret counters.
    /// Each secret read becomes its own series: for small vaults.
    #[arg(long, env = "KVFS_METRICS_PER_SECRET", help_heading = "Monitoring")]
    pub metrics_per_secret: bool,

    /// Keep every privilege kvfs starts with: no capability drop, no seccomp filter (for
    /// debugging; see SECURITY.md, "Least privilege").
    #[arg(long, env = "KVFS_NO_SANDBOX", help_heading = "Mount")]
    pub no_sandbox: bool,

    /// Control socket for live upgrades: a kvfs started on a mountpoint that a live kvfs serves
    /// takes the connection over through it, and the old one exits (default:
    /// /run/kvfs/control/<mountpoint>.sock; root only).
    #[arg(
        long,
        value_name = "PATH",
        env = "KVFS_CONTROL_SOCKET",
        help_heading = "Mount"
    )]
    pub control_socket: Option<PathBuf>,

    /// Serve /dev/fuse through fuser directly, without the relay that lets a new kvfs take the
    /// connection over: no live upgrades (a restart unmounts), one hop less per request.
    #[arg(long, env = "KVFS_NO_HANDOFF", help_heading = "Mount", conflicts_with_all = ["control_socket", "systemd_fd_store", "linger_after_handoff"])]
    pub no_handoff: bool,

    /// Under systemd, keep the FUSE connection in the service's file descriptor store, so that
    /// `systemctl restart` hands it to the next kvfs (needs `FileDescriptorStoreMax=` in the
    /// unit; on by itself where systemd sets FDSTORE, from systemd 254).
    #[arg(long, env = "KVFS_SYSTEMD_FD_STORE", help_heading = "Mount")]
    pub systemd_fd_store: bool,

    /// After handing the mount to a new kvfs, keep running (serving nothing) until SIGTERM,
    /// then exit 0 without unmounting: for Kubernetes, where a container that exits is started
    /// again, and the old pod's end is its deletion.
    #[arg(long, env = "KVFS_LINGER_AFTER_HANDOFF", help_heading = "Mount")]
    pub linger_after_handoff: bool,

    /// Refuse to run when memory cannot be locked (kvfs locks under an unlimited RLIMIT_MEMLOCK,
    /// which it raises itself with CAP_SYS_RESOURCE); without it kvfs warns once and runs with
    /// swappable memory.
    #[arg(long, env = "KVFS_REQUIRE_MLOCK", help_heading = "Mount")]
    pub require_mlock: bool,

    /// Threads answering the kernel.
    #[arg(long, value_name = "N", default_value = "4", env = "KVFS_THREADS", value_parser = clap::value_parser!(u16).range(1..=64), help_heading = "Mount")]
    pub threads: u16,
}

#[cfg(feature = "emulator")]
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to mount the sample vault.
    #[arg(
        value_name = "MOUNTPOINT",
        default_value = "/tmp/kvfs-demo",
        env = "KVFS_MOUNTPOINT"
    )]
    pub mountpoint: PathBuf,

    #[command(flatten)]
    pub options: MountOptions,
}

#[cfg(feature = "emulator")]
#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Directory for the emulator's CA (ca.pem, ca.key) and token signing key (token.key),
    /// reused across restarts so clients keep trusting it and tokens stay valid.
    #[arg(long, value_name = "DIR", env = "KVFS_EMULATOR_STATE_DIR")]
    pub state_dir: PathBuf,

    /// HTTPS port for the Key Vault API, Entra token endpoint and admin API (0 = any free port).
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = 8443,
        env = "KVFS_EMULATOR_PORT"
    )]
    pub port: u16,

    /// Plain-HTTP port for the IMDS token endpoint (0 = any free port).
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = 8080,
        env = "KVFS_EMULATOR_IMDS_PORT"
    )]
    pub imds_port: u16,

    /// Seed secrets from a JSON file or a directory (one file per secret); default: samples.
    #[arg(long, value_name = "PATH", env = "KVFS_EMULATOR_SEED")]
    pub seed: Option<PathBuf>,
}

const DURATION_FORM: &str = "a duration like 30s, 5m or 1h";

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}: expected {DURATION_FORM}"))
}

fn parse_request_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(600) {
        return Err(format!("must be between 100ms and 10m, as {DURATION_FORM}"));
    }
    Ok(d)
}

fn parse_shutdown_grace(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > Duration::from_secs(600) {
        return Err(format!("must be at most 10m, as {DURATION_FORM}"));
    }
    Ok(d)
}

fn parse_capacity(s: &str) -> Result<NonZeroUsize, String> {
    s.parse::<NonZeroUsize>()
        .map_err(|_| "expected a whole number of secrets, at least 1".to_owned())
}

fn parse_size(s: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = s
        .parse()
        .map_err(|_| "expected a size like 64MiB, 512KiB or 1GiB".to_owned())?;
    match usize::try_from(size.as_u64()) {
        Ok(bytes) if bytes >= 64 * 1024 => Ok(bytes),
        _ => Err("must be at least 64KiB, e.g. 64MiB".to_owned()),
    }
}

fn parse_rate(s: &str) -> Result<NonZeroU32, String> {
    s.parse::<NonZeroU32>()
        .map_err(|_| "expected a whole number of requests, at least 1".to_owned())
}

fn parse_mode(s: &str) -> Result<u16, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u16::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err("expected octal permission bits like 0440".to_owned()),
    }
}

fn parse_id(s: &str) -> Result<u32, String> {
    s.parse::<u32>()
        .map_err(|_| format!("expected a number such as 1000, not a name (`id -u {s}` gives it)"))
}

fn parse_env_rule(s: &str) -> Result<String, String> {
    match s.strip_prefix(crate::fs::ENV_TAG_PREFIX) {
        Some("") | Some("=") => Err(format!(
            "--env-file {s:?}: expected tag:KEY or tag:KEY=VALUE, e.g. 'tag:env=app'"
        )),
        Some(tag) if tag.starts_with('=') => Err(format!(
            "--env-file {s:?}: the tag's KEY is empty; expected tag:KEY or tag:KEY=VALUE"
        )),
        Some(_) => Ok(s.to_owned()),
        None => parse_glob(s).map_err(|e| format!("--env-file {s:?}: {e}")),
    }
}

fn parse_vault_url(s: &str) -> Result<Url, String> {
    if !s.contains("://") {
        return Err(format!(
            "no scheme: expected https://NAME.vault.azure.net, e.g. https://{}",
            s.trim_start_matches('/')
        ));
    }
    let url = Url::parse(s).map_err(|e| format!("{e}: expected https://NAME.vault.azure.net"))?;
    if url.scheme() != "https" || url.host_str().is_none() {
        return Err("expected an https URL like https://NAME.vault.azure.net".to_owned());
    }
    Ok(url)
}

fn parse_http_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("{e}: expected http://HOST:PORT"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("expected a URL like http://HOST:PORT".to_owned());
    }
    Ok(url)
}

/// `--rotation`'s values, named and explained here so that the filesystem core knows no clap.
impl clap::ValueEnum for Rotation {
    fn value_variants<'a>() -> &'a [Self] {
        &[Rotation::NewInode, Rotation::InPlace]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        use clap::builder::PossibleValue;
        Some(match self {
            Rotation::NewInode => PossibleValue::new("new-inode").help(
                "Each version is its own inode: never torn, an open file keeps its version, \
                 reads are served from the kernel's page cache without a message. A file \
                 bind-mounted on its own (a Kubernetes subPath) stays on the version it was \
                 mounted with",
            ),
            Rotation::InPlace => PossibleValue::new("in-place").help(
                "One inode per name; each open reads the version current at open time, straight \
                 from kvfs (direct I/O, no page cache). Never torn, and bind-mounted files \
                 follow rotations, at the cost of a few kernel round trips per open",
            ),
        })
    }
}

/// `--decode`'s encodings.
impl clap::ValueEnum for Decoding {
    fn value_variants<'a>() -> &'a [Self] {
        &[Decoding::Base64, Decoding::Hex]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        use clap::builder::PossibleValue;
        Some(match self {
            Decoding::Base64 => PossibleValue::new("base64")
                .help("RFC 4648 base64, standard or URL-safe alphabet, padding optional"),
            Decoding::Hex => PossibleValue::new("hex").help("Two hex digits per byte, either case"),
        })
    }
}

/// `--name-map`'s maps.
impl clap::ValueEnum for NameMap {
    fn value_variants<'a>() -> &'a [Self] {
        &[NameMap::Env]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(match self {
            NameMap::Env => clap::builder::PossibleValue::new("env").help(
                "db-password also as DB_PASSWORD; ConnectionStrings--Main also as \
                 ConnectionStrings:Main and CONNECTIONSTRINGS__MAIN",
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("30s, 5m"));
        assert!(parse_request_timeout("10ms").is_err());
        assert!(parse_request_timeout("1h").is_err());
        assert_eq!(parse_shutdown_grace("0s").unwrap(), Duration::ZERO);
        assert!(
            parse_shutdown_grace("11m")
                .unwrap_err()
                .contains("at most 10m")
        );
    }

    #[test]
    fn modes_and_urls() {
        assert_eq!(parse_mode("0440").unwrap(), 0o440);
        assert_eq!(parse_mode("600").unwrap(), 0o600);
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("rw-").is_err());
        assert!(parse_vault_url("https://v.vault.azure.net").is_ok());
        assert!(parse_vault_url("http://v.vault.azure.net").is_err());
        assert!(parse_vault_url("v.vault.azure.net").is_err());
        assert!(parse_capacity("0").is_err());
        assert!(
            parse_id("root")
                .unwrap_err()
                .contains("a number such as 1000")
        );
        assert_eq!(parse_id("1000").unwrap(), 1000);
        let no_scheme = parse_vault_url("v.vault.azure.net").unwrap_err();
        assert!(
            no_scheme.contains("https://v.vault.azure.net"),
            "{no_scheme}"
        );
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("1KiB").unwrap_err().contains("at least 64KiB"));
        assert!(parse_size("lots").unwrap_err().contains("64MiB"));
        assert!(parse_rate("0").is_err());
        assert_eq!(parse_rate("40").unwrap().get(), 40);
    }
}
