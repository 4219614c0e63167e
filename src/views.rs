//! Views: extra read-only files that kvfs derives from a secret's value, shown beside it.

pub mod cert;
