//! The quoting, unit by unit, then read back by the real readers: bash, python-dotenv and node
//! dotenv, each given one file of awkward values and random ones. The dotenv parsers come from
//! `scripts/dotenv-setup`; without them these tests skip, or fail under `CI=true`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn name(s: &str) -> SecretName {
    SecretName::parse(s).unwrap()
}

fn line(value: &str) -> String {
    let secret = name("v");
    let file = render([(&secret, value.as_bytes())]);
    assert!(file.skipped.is_empty());
    file.text.strip_prefix("V=").unwrap().to_owned()
}

#[test]
fn quoting_table() {
    let cases = [
        ("", "''\n"),
        ("plain", "'plain'\n"),
        (" spaced # not a comment ", "' spaced # not a comment '\n"),
        (
            "$HOME `id` \"q\" \\n \\\\ x",
            "'$HOME `id` \"q\" \\n \\\\ x'\n",
        ),
        ("two\nlines\n", "'two\nlines\n'\n"),
        ("it's", "\"it's\"\n"),
        (
            "it's $HOME `id` \"q\" \\n",
            "\"it's \\$HOME \\`id\\` \\\"q\\\" \\\\n\"\n",
        ),
        ("it's\ntwo", "\"it's\ntwo\"\n"),
        ("\\", "$'\\\\'\n"),
        ("C:\\dir\\", "$'C:\\\\dir\\\\'\n"),
        (
            "it's\n\t\r\u{e9}\\",
            "$'it\\'s\\x0a\\x09\\x0d\\xc3\\xa9\\\\'\n",
        ),
    ];
    for (value, want) in cases {
        assert_eq!(line(value), want, "{value:?}");
    }
}

#[test]
fn names_sorted_and_skips_reported() {
    let secrets = [
        (name("b-two"), &b"2"[..]),
        (name("a-one"), b"1"),
        (name("1password"), b"x"),
        (name("uid"), b"x"),
        (name("ppid"), b"x"),
        (name("nul"), b"a\0b"),
        (name("latin1"), b"caf\xe9"),
        (name("A-ONE"), b"dup"),
        (name("ConnectionStrings--Main"), b"Server=db"),
    ];
    let file = render(secrets.iter().map(|(n, v)| (n, *v)));
    assert_eq!(
        &file.text[..],
        "A_ONE='1'\nB_TWO='2'\nCONNECTIONSTRINGS__MAIN='Server=db'\n"
    );
    let skipped: Vec<(&str, SkipReason)> = file
        .skipped
        .iter()
        .map(|s| (s.name.as_str(), s.reason))
        .collect();
    assert_eq!(
        skipped,
        [
            ("1password", SkipReason::NotAVariableName),
            ("uid", SkipReason::BashReadOnly),
            ("ppid", SkipReason::BashReadOnly),
            ("nul", SkipReason::Nul),
            ("latin1", SkipReason::NotUtf8),
            ("A-ONE", SkipReason::SameName),
        ]
    );
    assert!(render([]).text.is_empty());
}

#[test]
fn text_never_debug_prints() {
    let secret = name("pw");
    let file = render([(&secret, &b"hunter2"[..])]);
    let shown = format!("{file:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn capacity_bound_holds() {
    for value in ["", "\\", "\u{10ffff}\\", "\x01\x02\\", "it's", "a\\b"] {
        let mut out = String::new();
        push_quoted(&mut out, value);
        assert!(out.len() <= max_quoted_len(value), "{value:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The readers themselves.

/// Who reads an env file back.
#[derive(Clone, Copy, Debug)]
enum Reader {
    Bash,
    Python { interpolate: bool },
    Node,
}

/// The module doc's table as code: whether `reader` reads `value` back exactly. Every reader
/// test checks this against the real parser, value by value, both ways.
fn reads_exactly(reader: Reader, value: &str) -> bool {
    let ansi_c = value.ends_with('\\');
    let single = !ansi_c && !value.contains('\'');
    match reader {
        Reader::Bash => true,
        Reader::Python { interpolate } => {
            if ansi_c || value.contains('\r') || (interpolate && has_python_variable(value)) {
                false
            } else if single {
                !value.contains("\\\\")
            } else {
                !value.contains(['$', '`'])
            }
        }
        Reader::Node => {
            !ansi_c && !value.contains('\r') && (single || !value.contains(['\\', '$', '"', '`']))
        }
    }
}

/// Whether python-dotenv's interpolation finds a variable in `value`: its pattern is
/// `\$\{[^}:]*(:-[^}]*)?\}`.
fn has_python_variable(value: &str) -> bool {
    value.match_indices("${").any(|(i, _)| {
        let rest = &value[i + 2..];
        let Some(end) = rest.find(['}', ':']) else {
            return false;
        };
        match rest[end..].strip_prefix(':') {
            None => true,
            Some(after) => after.starts_with('-') && after.contains('}'),
        }
    })
}

#[test]
fn python_variable_pattern() {
    for (value, has) in [
        ("${X}", true),
        ("a${}b", true),
        ("${X:-d}", true),
        ("${X:-}", true),
        ("${X:d}", false),
        ("${X:d}${Y}", true),
        ("${X", false),
        ("$X", false),
        ("${X:-d", false),
        ("{X}", false),
    ] {
        assert_eq!(has_python_variable(value), has, "{value:?}");
    }
}

/// Values that have broken env files somewhere, then random strings of awkward pieces.
fn corpus() -> Vec<String> {
    let mut values: Vec<String> = [
        "",
        " ",
        "plain",
        "it's",
        "\"double\"",
        "'single'",
        "`id`",
        "$(id)",
        "$HOME",
        "${HOME}",
        "${HOME:-x}",
        "\\",
        "\\\\",
        "a\\",
        "it's\\",
        "\\'",
        "\\\"",
        "\\n",
        "#",
        " # comment",
        "a #b",
        "x=y",
        "two\nlines",
        "\n",
        "ends with newline\n",
        "\r\n",
        "'\nEVIL=1\n'",
        "\nEVIL=1\\",
        "\"\nEVIL=1\n\"",
        "it's\nEVIL=1",
        "EVIL=1",
        "export EVIL=1",
        "  leading and trailing  ",
        "\ttab",
        "unicode \u{e9}\u{1f600}",
        "\u{2028}line separator",
        "\u{85}next line",
        "\u{a0}nbsp\u{feff}",
        "\x0b\x0c",
        "\x01control",
        "!history",
        "a'b\"c`d$e\\f#g",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    values.push("x".repeat(25 * 1024));
    const PIECES: &[&str] = &[
        "a", "Z", "0", " ", "\t", "'", "\"", "`", "$", "\\", "#", "\n", "\r", "{", "}", ":", "-",
        "=", "!", ";", "|", "*", "~", "\u{e9}", "\u{2028}", "\u{85}", "\u{a0}", "\x0b", "\x01",
        "${X}", "${X:-d}", "$(id)", "\\n", "\\\\", " #", "\\'", "\\\"", "\nB=1", "export ",
    ];
    let mut rng = StdRng::seed_from_u64(0x6b76_6673);
    for _ in 0..600 {
        let len = rng.random_range(0..10);
        values.push(
            (0..len)
                .map(|_| PIECES[rng.random_range(0..PIECES.len())])
                .collect(),
        );
    }
    values
}

/// The corpus as secrets `v-0000`, `v-0001`, … and the file rendered from them.
struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    /// Variable name -> value, in file order.
    vars: Vec<(String, String)>,
}

fn fixture() -> Fixture {
    let values = corpus();
    let names: Vec<SecretName> = (0..values.len())
        .map(|i| name(&format!("v-{i:04}")))
        .collect();
    let file = render(names.iter().zip(&values).map(|(n, v)| (n, v.as_bytes())));
    assert!(file.skipped.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.env");
    std::fs::write(&path, file.text.as_bytes()).unwrap();
    let vars = names.iter().map(env_name).zip(values).collect();
    Fixture {
        _dir: dir,
        path,
        vars,
    }
}

/// Checks what `reader` read (`None`: variable absent) against the table, and that it read
/// no variable the file does not set.
fn check(reader: Reader, fixture: &Fixture, read: &BTreeMap<String, Option<String>>) {
    let mut wrong = Vec::new();
    for (var, value) in &fixture.vars {
        let got = read.get(var).cloned().flatten();
        let exact = got.as_deref() == Some(value.as_str());
        if exact != reads_exactly(reader, value) {
            wrong.push(format!(
                "{var}: {value:?} read as {got:?}: exact is {exact}, the table says {}",
                !exact
            ));
        }
    }
    let expected: BTreeSet<&str> = fixture.vars.iter().map(|(v, _)| v.as_str()).collect();
    let extra: Vec<&String> = read
        .keys()
        .filter(|k| !expected.contains(k.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "{reader:?} read variables the file does not set: {extra:?}"
    );
    assert!(wrong.is_empty(), "{reader:?}:\n{}", wrong.join("\n"));
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `None` when `what` is missing outside CI (the test then skips); a failure under `CI=true`.
fn require(what: &str, present: bool) -> Option<()> {
    if present {
        return Some(());
    }
    let hint = format!("{what} is missing: run scripts/dotenv-setup");
    assert!(!ci(), "{hint}");
    eprintln!("skipped: {hint}");
    None
}

/// Where scripts/dotenv-setup installs the dotenv parsers.
fn dotenv_dir() -> PathBuf {
    std::env::var_os("KVFS_DOTENV").map_or_else(|| "/var/cache/kvfs/dotenv".into(), PathBuf::from)
}

fn run(command: &mut Command) -> Vec<u8> {
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{command:?}: {}\n{stderr}",
        out.status
    );
    // python-dotenv warns of a line it cannot parse: none may be.
    assert!(stderr.trim().is_empty(), "{command:?}: {stderr}");
    out.stdout
}

#[test]
fn bash_reads_back_every_value() {
    let fixture = fixture();
    // Values and presence of every variable, then any exported variable the file added
    // besides them.
    let script = r#"
        declare -A before
        for v in $(compgen -e); do before[$v]=1; done
        set -a; source "$1"; set +a
        shift
        for n; do
            if [[ -v $n ]]; then printf '1%s\0' "${!n}"; else printf '0\0'; fi
        done
        for v in $(compgen -e); do [[ ${before[$v]} ]] || printf '+%s\0' "$v"; done
    "#;
    let out = run(Command::new("bash")
        .env_clear()
        .args(["--norc", "--noprofile", "-c", script, "bash"])
        .arg(&fixture.path)
        .args(fixture.vars.iter().map(|(v, _)| v)));
    let mut records = out.split(|&b| b == 0);
    let mut read = BTreeMap::new();
    for (var, _) in &fixture.vars {
        let record = String::from_utf8(records.next().unwrap().to_vec()).unwrap();
        let value = record.strip_prefix('1').map(String::from);
        read.insert(var.clone(), value);
    }
    let added: BTreeSet<&str> = records
        .filter(|r| !r.is_empty())
        .map(|r| std::str::from_utf8(r.strip_prefix(b"+").unwrap()).unwrap())
        .collect();
    let set: BTreeSet<&str> = fixture.vars.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(added, set);
    check(Reader::Bash, &fixture, &read);
}

#[test]
fn python_dotenv_reads_back_as_documented() {
    let python = dotenv_dir().join("venv/bin/python");
    let Some(()) = require("python-dotenv", python.exists()) else {
        return;
    };
    let fixture = fixture();
    let script = "import json, sys\n\
        from dotenv import dotenv_values\n\
        print(json.dumps([dotenv_values(sys.argv[1]),\n\
                          dotenv_values(sys.argv[1], interpolate=False)]))";
    let out = run(Command::new(python)
        .env_clear()
        .args(["-c", script])
        .arg(&fixture.path));
    let [interpolated, plain]: [BTreeMap<String, Option<String>>; 2] =
        serde_json::from_slice(&out).unwrap();
    check(
        Reader::Python { interpolate: true },
        &fixture,
        &interpolated,
    );
    check(Reader::Python { interpolate: false }, &fixture, &plain);
}

#[test]
fn node_dotenv_reads_back_as_documented() {
    let modules = dotenv_dir().join("node/node_modules");
    let node = Command::new("node").arg("--version").output().is_ok();
    let Some(()) = require("node", node) else {
        return;
    };
    let Some(()) = require("node dotenv", modules.join("dotenv").exists()) else {
        return;
    };
    let fixture = fixture();
    let script = "const dotenv = require('dotenv');\n\
        const text = require('fs').readFileSync(process.argv[1]);\n\
        process.stdout.write(JSON.stringify([dotenv.parse(text), dotenv.parse(text, {fast: true})]));";
    let out = run(Command::new("node")
        .env_clear()
        .env("NODE_PATH", &modules)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["-e", script])
        .arg(&fixture.path));
    let parses: [BTreeMap<String, Option<String>>; 2] = serde_json::from_slice(&out).unwrap();
    for read in &parses {
        check(Reader::Node, &fixture, read);
    }
}
