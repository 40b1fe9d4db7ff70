//! The MySQL image the harness runs. By default it is `clone-relay-mysql:local`, built once from
//! Debian's packages by `scripts/mysql-image.sh` (embedded here) and reused while it exists.
//! `CLONE_RELAY_MYSQL_IMAGE=NAME:TAG` picks any other MySQL 8.0.17+ image instead.

use anyhow::{Context, Result, bail};
use tokio::process::Command;

/// Environment variable naming the MySQL image to use instead of the built one.
pub const IMAGE_ENV: &str = "CLONE_RELAY_MYSQL_IMAGE";
/// The tag the build script gives its image.
pub const DEFAULT_IMAGE: &str = "clone-relay-mysql:local";

const BUILD_SCRIPT: &str = include_str!("../../scripts/mysql-image.sh");

/// An image reference split into name and tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub name: String,
    pub tag: String,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<Self> {
        // A tag follows the last ':' unless that ':' belongs to a registry's port.
        match s.rsplit_once(':') {
            Some((name, tag)) if !name.is_empty() && !tag.is_empty() && !tag.contains('/') => {
                Ok(ImageRef {
                    name: name.into(),
                    tag: tag.into(),
                })
            }
            _ if !s.is_empty() => Ok(ImageRef {
                name: s.into(),
                tag: "latest".into(),
            }),
            _ => bail!("{IMAGE_ENV} is empty"),
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

/// The image to run: the one named by `CLONE_RELAY_MYSQL_IMAGE`, or the built one, building it
/// first when it is missing (about half a minute; later calls find it).
pub async fn mysql_image() -> Result<ImageRef> {
    if let Ok(named) = std::env::var(IMAGE_ENV) {
        return ImageRef::parse(&named);
    }
    let status = Command::new("bash")
        .arg("-c")
        .arg(BUILD_SCRIPT)
        .arg("mysql-image")
        .status()
        .await
        .context("running the MySQL image build script")?;
    if !status.success() {
        bail!("building the MySQL image {DEFAULT_IMAGE} failed ({status}); see the lines above");
    }
    ImageRef::parse(DEFAULT_IMAGE)
}

/// The relay's own image (`clone-relay:<version>`), built from this workspace's release binary
/// by `scripts/relay-image.sh`; an image of the same binary is reused. Builds the release binary
/// first when it is missing or stale (in the target folder of this test binary).
pub async fn relay_image() -> Result<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/relay-image.sh");
    let exe = std::env::current_exe().context("locating the test binary")?;
    // target/<profile>/deps/<test> -> target
    let target = exe
        .ancestors()
        .nth(3)
        .context("the test binary has no target folder")?;
    let out = Command::new("bash")
        .arg(script)
        .env("CARGO_TARGET_DIR", target)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .context("running the relay image build script")?;
    if !out.status.success() {
        bail!(
            "building the relay image failed ({}); see the lines above",
            out.status
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .last()
        .map(|tag| tag.trim().to_string())
        .filter(|tag| tag.starts_with("clone-relay:"))
        .with_context(|| format!("the relay image script printed no tag: {stdout:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_image_references() {
        let r = ImageRef::parse("mysql:8.4").unwrap();
        assert_eq!((r.name.as_str(), r.tag.as_str()), ("mysql", "8.4"));
        let r = ImageRef::parse("registry.local:5000/db/mysql").unwrap();
        assert_eq!(r.tag, "latest");
        assert_eq!(r.name, "registry.local:5000/db/mysql");
        let r = ImageRef::parse("registry.local:5000/db/mysql:9.7").unwrap();
        assert_eq!(r.to_string(), "registry.local:5000/db/mysql:9.7");
        assert!(ImageRef::parse("").is_err());
    }
}
