//! A real nginx serving TLS on 127.0.0.1 from certificate files, to test what a web server makes
//! of kvfs's certificate views: [`Nginx::start`] runs it as a child (`daemon off`, its own
//! master process) with a generated config in a temporary directory that also holds its pid
//! file, logs and temp paths; [`Nginx::reload`] is SIGHUP, what `nginx -s reload` sends;
//! dropping it stops nginx (SIGTERM, then SIGKILL to its process group) and waits.
//! [`served_certificate`] handshakes with a rustls client that trusts anything (the test
//! compares certificates itself) and returns what nginx presented.
//!
//! nginx comes from Debian's `nginx` package (scripts/setup installs it); [`nginx_binary`]
//! skips a test where it is missing, except under CI=true, where that is a failure.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// How long nginx may take to start, reload or stop.
const LIMIT: Duration = Duration::from_secs(10);

/// The nginx binary, or `None` (the caller skips) where it is missing. Under CI=true a
/// missing nginx panics: scripts/setup installs it.
pub fn nginx_binary() -> Option<PathBuf> {
    let candidates = ["/usr/sbin/nginx", "nginx"];
    let found = candidates.iter().map(PathBuf::from).find(|bin| {
        Command::new(bin)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nginx is missing: scripts/setup installs Debian's nginx package"
        );
        eprintln!("skipping: nginx is missing (scripts/setup installs it)");
    }
    found
}

/// A running nginx; dropped, it is stopped.
pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

/// A free port on 127.0.0.1 (free when asked: `start` retries if another process takes it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn quoted(path: &Path) -> String {
    format!("\"{}\"", path.display())
}

fn config(dir: &Path, port: u16, cert: &Path, key: &Path) -> String {
    let tmp = |what: &str| quoted(&dir.join("tmp").join(what));
    // As root, workers would switch to `nobody` and could not use the private temp paths.
    let user = if is_root() { "user root;\n" } else { "" };
    format!(
        "daemon off;
master_process on;
worker_processes 1;
{user}pid {pid};
error_log {log} notice;
events {{ worker_connections 64; }}
http {{
    access_log {access};
    client_body_temp_path {body};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 \"ok\\n\"; }}
    }}
}}
",
        pid = quoted(&dir.join("nginx.pid")),
        log = quoted(&dir.join("error.log")),
        access = quoted(&dir.join("access.log")),
        body = tmp("body"),
        proxy = tmp("proxy"),
        fastcgi = tmp("fastcgi"),
        uwsgi = tmp("uwsgi"),
        scgi = tmp("scgi"),
        cert = quoted(cert),
        key = quoted(key),
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Nginx {
    /// Starts nginx serving `cert` (PEM, leaf first) with `key` on a free loopback port and
    /// waits until it accepts connections. The error carries nginx's log.
    pub fn start(bin: &Path, cert: &Path, key: &Path) -> Result<Nginx, String> {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::start_on(bin, free_port(), cert, key) {
                Ok(nginx) => return Ok(nginx),
                Err(e) if e.contains("Address already in use") => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    fn start_on(bin: &Path, port: u16, cert: &Path, key: &Path) -> Result<Nginx, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        std::fs::create_dir(dir.path().join("tmp")).map_err(|e| format!("tmp dir: {e}"))?;
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config(dir.path(), port, cert, key))
            .map_err(|e| format!("write nginx.conf: {e}"))?;
        let output = std::fs::File::create(dir.path().join("output.log"))
            .map_err(|e| format!("output.log: {e}"))?;
        let errors = output.try_clone().map_err(|e| format!("output.log: {e}"))?;
        let child = Command::new(bin)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            // Its own process group: the last resort in Drop kills the workers too.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let mut nginx = Nginx {
            child,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                return Err(format!("nginx exited ({status}): {}", nginx.logs()));
            }
            if TcpStream::connect_timeout(&nginx.addr, Duration::from_millis(200)).is_ok() {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "nginx did not listen within {LIMIT:?}: {}",
                    nginx.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where nginx listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// nginx's error log and what it wrote to stdout and stderr.
    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}{}", read("output.log"), read("error.log"))
    }

    fn count_in_log(&self, needle: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join("error.log"))
            .unwrap_or_default()
            .matches(needle)
            .count()
    }

    fn signal(&self, signal: i32) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child, not yet reaped (Drop reaps it).
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Reloads (SIGHUP): nginx reads its config and the certificate files again. Returns once
    /// new workers run with them, or the error nginx logged when it kept the old ones (a key
    /// that does not match, a file that does not parse). Old workers may still finish
    /// connections for a moment: poll [`served_certificate`] for the change.
    pub fn reload(&self) -> Result<(), String> {
        let started = self.count_in_log("start worker processes");
        let failed = self.count_in_log("[emerg]");
        self.signal(libc::SIGHUP);
        let deadline = Instant::now() + LIMIT;
        while Instant::now() < deadline {
            if self.count_in_log("[emerg]") > failed {
                return Err(format!("nginx refused the reload: {}", self.logs()));
            }
            if self.count_in_log("start worker processes") > started {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("no reload within {LIMIT:?}: {}", self.logs()))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + LIMIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the process group this child leads (spawned with
            // process_group(0)): nginx's master and its workers.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

/// What a TLS server presented.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedCert {
    /// DER, as sent: the leaf first.
    pub chain: Vec<Vec<u8>>,
    /// The leaf's subject, e.g. `CN=web.example`.
    pub subject: String,
    /// The leaf's serial, hex bytes joined by `:`.
    pub serial: String,
}

impl ServedCert {
    pub fn leaf(&self) -> &[u8] {
        self.chain.first().map(Vec::as_slice).unwrap_or_default()
    }
}

/// Accepts any certificate, but still checks the handshake signature: the server proves it
/// holds the private key of the leaf it sent.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Connects to `addr`, completes a TLS handshake (SNI `server_name`) and returns the
/// certificates the server sent.
pub fn served_certificate(addr: SocketAddr, server_name: &str) -> Result<ServedCert, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyCertificate(provider.signature_verification_algorithms));
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::clone(&provider) as Arc<CryptoProvider>)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| format!("server name {server_name}: {e}"))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| format!("TLS client: {e}"))?;
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|()| sock.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
    }
    let chain: Vec<Vec<u8>> = conn
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    conn.send_close_notify();
    let _ = conn.complete_io(&mut sock);
    let leaf = chain.first().ok_or("the server sent no certificate")?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the served leaf does not parse: {e}"))?;
    Ok(ServedCert {
        subject: parsed.subject().to_string(),
        serial: parsed.raw_serial_as_string(),
        chain,
    })
}

/// Polls [`served_certificate`] until `done` accepts what the server sends, up to `limit`;
/// the last certificate seen, or the last error.
pub fn wait_for_served(
    addr: SocketAddr,
    server_name: &str,
    limit: Duration,
    mut done: impl FnMut(&ServedCert) -> bool,
) -> Result<ServedCert, String> {
    let deadline = Instant::now() + limit;
    loop {
        let served = served_certificate(addr, server_name);
        match &served {
            Ok(cert) if done(cert) => return served,
            _ if Instant::now() > deadline => {
                return served.and_then(|cert| {
                    Err(format!("still served after {limit:?}: {}", cert.subject))
                });
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
