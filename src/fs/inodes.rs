//! The inode table: which node each inode number is, how many references the kernel holds to
//! it, and the key that finds it again.
//!
//! Rules the kernel relies on, and the property test below checks against a plain model:
//! - a number is never handed out twice for the mount's life (zero-message open keeps pages by
//!   inode: a reused number could serve another file's pages);
//! - a node lives while the kernel holds a reference (`lookups` > 0), whatever happened to its
//!   key meanwhile;
//! - a key finds at most one node; releasing it (a rotation or a revocation) makes the next
//!   lookup of that key a new node, while the old one keeps serving who holds it.

use std::collections::{BTreeMap, HashMap};

use super::{Node, Render};

/// What finds a node again. Ordered so that every file key of a name is one range.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Key {
    /// A secret's file: (name key, version id, how it shows the value). Version "" is the
    /// name's one inode in place.
    Version(String, String, Render),
    /// `.versions/<name>`, by name key.
    VersionsOf(String),
    /// A JSON secret's directory: (name key, version id, path of keys).
    JsonDir(String, String, Vec<String>),
    /// `.env`, by the versions it holds.
    Env(String),
}

pub(super) struct Slot {
    pub node: Node,
    /// References the kernel holds (lookups answered minus forgotten).
    pub lookups: u64,
    /// The key this node was made for; it may since find a newer node, or none.
    pub key: Key,
}

pub(super) struct Inodes {
    next: u64,
    slots: HashMap<u64, Slot>,
    keys: BTreeMap<Key, u64>,
}

impl Inodes {
    /// An empty table whose first inode is `first`.
    pub fn new(first: u64) -> Self {
        Self {
            next: first,
            slots: HashMap::new(),
            keys: BTreeMap::new(),
        }
    }

    /// The node `key` finds, with one more kernel reference; a new one (from `make`) if the
    /// key finds none.
    pub fn look_up(&mut self, key: Key, make: impl FnOnce() -> Node) -> (u64, &mut Node) {
        if self.keys.contains_key(&key) {
            return self.refer(&key).expect("every key finds a live slot");
        }
        let ino = self.next;
        self.next += 1;
        self.keys.insert(key.clone(), ino);
        let slot = self.slots.entry(ino).or_insert(Slot {
            node: make(),
            lookups: 0,
            key,
        });
        slot.lookups += 1;
        (ino, &mut slot.node)
    }

    /// The node `key` finds, with one more kernel reference; None when it finds none.
    pub fn refer(&mut self, key: &Key) -> Option<(u64, &mut Node)> {
        let ino = *self.keys.get(key)?;
        let slot = self.slots.get_mut(&ino)?;
        slot.lookups += 1;
        Some((ino, &mut slot.node))
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.slots.get(&ino).map(|s| &s.node)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.slots.get_mut(&ino).map(|s| &mut s.node)
    }

    /// The inode `key` finds, if any.
    pub fn find(&self, key: &Key) -> Option<u64> {
        self.keys.get(key).copied()
    }

    /// The kernel dropped `n` references to `ino`: at zero the node goes (returned), and its
    /// key with it unless the key already finds a newer node.
    pub fn forget(&mut self, ino: u64, n: u64) -> Option<Node> {
        let slot = self.slots.get_mut(&ino)?;
        slot.lookups = slot.lookups.saturating_sub(n);
        if slot.lookups > 0 {
            return None;
        }
        let slot = self.slots.remove(&ino)?;
        if self.keys.get(&slot.key) == Some(&ino) {
            self.keys.remove(&slot.key);
        }
        Some(slot.node)
    }

    /// `key` stops finding its node (which lives on while the kernel holds it): the next
    /// lookup of the key makes a new node.
    pub fn release(&mut self, key: &Key) {
        self.keys.remove(key);
    }

    /// The file nodes a name's keys find: (version key, inode).
    pub fn files_of<'a>(&'a self, name_key: &'a str) -> impl Iterator<Item = (&'a str, u64)> + 'a {
        self.keys
            .range(Key::Version(name_key.to_owned(), String::new(), Render::Value)..)
            .map_while(move |(key, &ino)| match key {
                Key::Version(n, v, _) if n == name_key => Some((v.as_str(), ino)),
                _ => None,
            })
    }

    /// Every live node, with its kernel references.
    pub fn nodes(&self) -> impl Iterator<Item = (u64, &Slot)> {
        self.slots.iter().map(|(&ino, slot)| (ino, slot))
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The next inode number to hand out.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Every key that finds a node.
    pub fn keys(&self) -> impl Iterator<Item = (&Key, u64)> {
        self.keys.iter().map(|(k, &ino)| (k, ino))
    }

    /// A table rebuilt from a handed-over state: nodes (inode, node, references, the key it
    /// was made for), the keys that find them, and the next number. The caller checks ranges.
    pub fn restored(
        next: u64,
        nodes: impl IntoIterator<Item = (u64, Slot)>,
        keys: impl IntoIterator<Item = (Key, u64)>,
    ) -> Self {
        Self {
            next,
            slots: nodes.into_iter().collect(),
            keys: keys.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretName;
    use proptest::prelude::*;

    fn dir(name: &str) -> Node {
        Node::VersionsOf(SecretName::parse(name).expect("name"))
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// A lookup of key number k (a name's version or its `.versions` directory).
        LookUp(usize),
        /// The kernel forgets n references of the i-th live inode.
        Forget(usize, u64),
        /// A rotation or revocation: key k stops finding its node.
        Release(usize),
    }

    fn keys() -> Vec<Key> {
        let mut keys = Vec::new();
        for name in ["a", "b", "c"] {
            for version in ["", "v1", "v2"] {
                keys.push(Key::Version(name.into(), version.into(), Render::Value));
            }
            keys.push(Key::VersionsOf(name.into()));
        }
        keys
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..12usize).prop_map(Op::LookUp),
            3 => (0..16usize, 1..3u64).prop_map(|(i, n)| Op::Forget(i, n)),
            1 => (0..12usize).prop_map(Op::Release),
        ]
    }

    proptest! {
        /// The table against a model of what the kernel was told: references per inode, which
        /// inode each key finds, numbers never reused, nodes gone exactly at zero references.
        #[test]
        fn the_table_follows_the_kernels_references(ops in prop::collection::vec(op(), 1..200)) {
            let keys = keys();
            let mut table = Inodes::new(3);
            // Model: live inode -> (key, references); key -> inode; every number handed out.
            let mut live: BTreeMap<u64, (Key, u64)> = BTreeMap::new();
            let mut finds: BTreeMap<Key, u64> = BTreeMap::new();
            let mut handed_out: Vec<u64> = Vec::new();
            for op in ops {
                match op {
                    Op::LookUp(k) => {
                        let key = keys[k].clone();
                        let (ino, _) = table.look_up(key.clone(), || dir("x"));
                        match finds.get(&key) {
                            Some(&expected) => prop_assert_eq!(ino, expected),
                            None => {
                                prop_assert!(!handed_out.contains(&ino), "{} reused", ino);
                                prop_assert!(handed_out.last().is_none_or(|&l| ino > l));
                                handed_out.push(ino);
                                finds.insert(key.clone(), ino);
                                live.insert(ino, (key.clone(), 0));
                            }
                        }
                        live.get_mut(&ino).expect("live").1 += 1;
                    }
                    Op::Forget(i, n) => {
                        let Some((&ino, _)) = live.iter().nth(i % live.len().max(1)) else {
                            continue;
                        };
                        let gone = table.forget(ino, n).is_some();
                        let (key, refs) = live.get_mut(&ino).expect("live");
                        *refs = refs.saturating_sub(n);
                        prop_assert_eq!(gone, *refs == 0);
                        if *refs == 0 {
                            let key = key.clone();
                            live.remove(&ino);
                            if finds.get(&key) == Some(&ino) {
                                finds.remove(&key);
                            }
                        }
                    }
                    Op::Release(k) => {
                        table.release(&keys[k]);
                        finds.remove(&keys[k]);
                    }
                }
                for key in &keys {
                    prop_assert_eq!(table.find(key), finds.get(key).copied(), "{:?}", key);
                }
                let refs: BTreeMap<u64, u64> =
                    table.nodes().map(|(ino, s)| (ino, s.lookups)).collect();
                let model: BTreeMap<u64, u64> =
                    live.iter().map(|(&ino, (_, n))| (ino, *n)).collect();
                prop_assert_eq!(refs, model);
            }
        }
    }

    #[test]
    fn a_names_files_are_one_range() {
        let mut table = Inodes::new(3);
        for (name, version) in [("a", "v1"), ("ab", "v1"), ("a", "v2"), ("b", "")] {
            table.look_up(
                Key::Version(name.into(), version.into(), Render::Value),
                || dir("x"),
            );
        }
        table.look_up(Key::VersionsOf("a".into()), || dir("a"));
        let a: Vec<_> = table.files_of("a").map(|(v, _)| v.to_owned()).collect();
        assert_eq!(a, ["v1", "v2"]);
        assert_eq!(table.files_of("b").count(), 1);
        assert_eq!(table.files_of("c").count(), 0);
    }
}
