//! Who sees which secret: `--owner GLOB=UID:GID:MODE` rules give the secrets whose names match
//! an owner and mode of their own (first matching rule wins, else the global `--uid`, `--gid`,
//! `--file-mode`), and `--include` / `--exclude` globs hide secrets entirely.
//!
//! The kernel enforces the modes (the mount always has `default_permissions`); kvfs only
//! reports them. Hiding is kvfs's own: a hidden name is never listed, answers ENOENT without a
//! request, and so is never fetched nor refreshed. Globs match the whole name and ignore case,
//! as Key Vault compares names. Rules are fixed for the mount's life.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// Owner, group and permission bits of one secret's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u16,
}

impl Owner {
    /// The mode of `.versions/<name>`: the file mode with search (x) added wherever read (r) is
    /// set, so exactly those who may read the secret may list and open its versions.
    pub fn dir_mode(&self) -> u16 {
        self.mode | ((self.mode & 0o444) >> 2)
    }
}

/// One `--owner GLOB=UID:GID:MODE` rule, as parsed from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerRule {
    pub glob: String,
    pub owner: Owner,
}

const OWNER_FORM: &str = "expected GLOB=UID:GID:MODE, e.g. 'app-a-*=1001:1001:0400'";

/// Parses `GLOB=UID:GID:MODE` (UID and GID numeric, MODE octal up to 0777).
pub fn parse_owner_rule(s: &str) -> Result<OwnerRule, String> {
    let (glob, owner) = s.rsplit_once('=').ok_or_else(|| OWNER_FORM.to_owned())?;
    let glob = parse_glob(glob)?;
    let mut parts = owner.split(':');
    let (Some(uid), Some(gid), Some(mode), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(OWNER_FORM.to_owned());
    };
    let id = |what: &str, v: &str| {
        v.parse::<u32>().map_err(|_| {
            format!("{what} {v:?} is not a number (`id -u NAME` gives it): {OWNER_FORM}")
        })
    };
    let uid = id("UID", uid)?;
    let gid = id("GID", gid)?;
    let mode = match u16::from_str_radix(mode.strip_prefix("0o").unwrap_or(mode), 8) {
        Ok(m) if m <= 0o777 => m,
        _ => {
            return Err(format!(
                "MODE {mode:?} is not octal permission bits like 0440"
            ));
        }
    };
    Ok(OwnerRule {
        glob,
        owner: Owner { uid, gid, mode },
    })
}

/// Checks that `s` is a glob (`*`, `?`, `[a-z]`, `{a,b}`) and returns it.
pub fn parse_glob(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("empty glob: expected a name pattern like 'app-*'".to_owned());
    }
    glob(s).map(|_| s.to_owned())
}

pub(crate) fn glob(s: &str) -> Result<Glob, String> {
    GlobBuilder::new(s)
        .case_insensitive(true)
        .build()
        .map_err(|e| format!("not a glob: {e}"))
}

pub(crate) fn glob_set<'a>(globs: impl IntoIterator<Item = &'a str>) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for g in globs {
        set.add(glob(g)?);
    }
    set.build()
        .map_err(|e| format!("cannot compile globs: {e}"))
}

/// The compiled rules. The default shows everything and has no owner rules.
#[derive(Clone, Debug, Default)]
pub struct AccessRules {
    owners: Vec<Owner>,
    owner_globs: GlobSet,
    /// `None`: no `--include`, every name not excluded is shown.
    include: Option<GlobSet>,
    exclude: GlobSet,
}

impl AccessRules {
    pub fn new(
        owners: &[OwnerRule],
        include: &[String],
        exclude: &[String],
    ) -> Result<Self, String> {
        Ok(Self {
            owners: owners.iter().map(|r| r.owner).collect(),
            owner_globs: glob_set(owners.iter().map(|r| r.glob.as_str()))?,
            include: if include.is_empty() {
                None
            } else {
                Some(glob_set(include.iter().map(String::as_str))?)
            },
            exclude: glob_set(exclude.iter().map(String::as_str))?,
        })
    }

    /// The owner of the first `--owner` rule matching `name`, if any.
    pub fn owner_of(&self, name: &str) -> Option<Owner> {
        let first = self.owner_globs.matches(name).into_iter().min()?;
        self.owners.get(first).copied()
    }

    /// Whether `name` exists on the mount: not excluded (exclude wins), and included when any
    /// `--include` is given.
    pub fn visible(&self, name: &str) -> bool {
        !self.exclude.is_match(name) && self.include.as_ref().is_none_or(|i| i.is_match(name))
    }

    /// Whether any rule can hide a name.
    pub fn hides_any(&self) -> bool {
        self.include.is_some() || !self.exclude.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input, and the glob and owner parsed or a piece of the error message.
    type ParseCase<'a> = (&'a str, Result<(&'a str, Owner), &'a str>);
    /// Includes, excludes, and names with whether each is shown.
    type VisibilityCase<'a> = (&'a [&'a str], &'a [&'a str], &'a [(&'a str, bool)]);

    fn owner(uid: u32, gid: u32, mode: u16) -> Owner {
        Owner { uid, gid, mode }
    }

    #[test]
    fn owner_rules_parse() {
        let cases: &[ParseCase] = &[
            (
                "app-a-*=1001:1001:0400",
                Ok(("app-a-*", owner(1001, 1001, 0o400))),
            ),
            ("db=0:42:440", Ok(("db", owner(0, 42, 0o440)))),
            ("{x,y}-*=1:2:0o640", Ok(("{x,y}-*", owner(1, 2, 0o640)))),
            ("app-*", Err("expected GLOB=UID:GID:MODE")),
            ("app-*=1001:1001", Err("expected GLOB=UID:GID:MODE")),
            ("app-*=1001:1001:0400:1", Err("expected GLOB=UID:GID:MODE")),
            (
                "app-*=alice:1001:0400",
                Err("UID \"alice\" is not a number"),
            ),
            ("app-*=1:staff:0400", Err("GID \"staff\" is not a number")),
            ("app-*=1:1:0999", Err("MODE \"0999\" is not octal")),
            ("app-*=1:1:4755", Err("MODE \"4755\" is not octal")),
            ("=1:1:0400", Err("empty glob")),
            ("app-[*=1:1:0400", Err("not a glob")),
        ];
        for (input, want) in cases {
            let got = parse_owner_rule(input);
            match (want, &got) {
                (Ok((glob, own)), Ok(rule)) => {
                    assert_eq!((rule.glob.as_str(), rule.owner), (*glob, *own), "{input}");
                }
                (Err(msg), Err(e)) => assert!(e.contains(msg), "{input}: {e}"),
                _ => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn directory_mode_adds_search_where_read_is_set() {
        for (file, dir) in [
            (0o400, 0o500),
            (0o440, 0o550),
            (0o444, 0o555),
            (0o600, 0o700),
            (0o040, 0o050),
            (0o000, 0o000),
            (0o200, 0o200),
        ] {
            assert_eq!(owner(0, 0, file).dir_mode(), dir, "{file:o}");
        }
    }

    #[test]
    fn first_matching_owner_rule_wins_case_insensitively() {
        let rules = AccessRules::new(
            &[
                parse_owner_rule("app-a-special=7:7:0440").unwrap(),
                parse_owner_rule("app-a-*=1001:1001:0400").unwrap(),
                parse_owner_rule("app-*=1:1:0444").unwrap(),
                parse_owner_rule("?=9:9:0400").unwrap(),
            ],
            &[],
            &[],
        )
        .unwrap();
        for (name, want) in [
            ("app-a-special", Some(owner(7, 7, 0o440))),
            ("APP-A-Special", Some(owner(7, 7, 0o440))),
            ("app-a-db", Some(owner(1001, 1001, 0o400))),
            ("App-A-db", Some(owner(1001, 1001, 0o400))),
            ("app-b-db", Some(owner(1, 1, 0o444))),
            ("x", Some(owner(9, 9, 0o400))),
            ("xy", None),
            ("other", None),
            // Whole-name match: a glob is not a substring search.
            ("my-app-a-db", None),
        ] {
            assert_eq!(rules.owner_of(name), want, "{name}");
        }
    }

    #[test]
    fn include_and_exclude() {
        let s = |v: &[&str]| v.iter().map(|g| (*g).to_owned()).collect::<Vec<_>>();
        let cases: &[VisibilityCase] = &[
            // No rules: everything.
            (&[], &[], &[("a", true), ("hidden-x", true)]),
            (
                &[],
                &["hidden-*"],
                &[("a", true), ("hidden-x", false), ("HIDDEN-X", false)],
            ),
            (
                &["app-*"],
                &[],
                &[("app-1", true), ("App-1", true), ("db", false)],
            ),
            // Exclude wins over include.
            (
                &["app-*"],
                &["app-secret-*"],
                &[("app-1", true), ("app-secret-1", false), ("db", false)],
            ),
            (&["a", "b"], &[], &[("a", true), ("b", true), ("ab", false)]),
        ];
        for (include, exclude, names) in cases {
            let rules = AccessRules::new(&[], &s(include), &s(exclude)).unwrap();
            assert_eq!(
                rules.hides_any(),
                !include.is_empty() || !exclude.is_empty()
            );
            for (name, visible) in *names {
                assert_eq!(
                    rules.visible(name),
                    *visible,
                    "{name} with include {include:?} exclude {exclude:?}"
                );
            }
        }
        assert!(AccessRules::default().visible("anything"));
        assert!(parse_glob("").is_err());
        assert!(parse_glob("a[").unwrap_err().contains("not a glob"));
    }
}
