//! Remote sources for serve mode, one module each; each implements [`crate::serve::Source`].

#[cfg(feature = "dynamodb")]
pub mod dynamodb;

pub mod cloudflare;
