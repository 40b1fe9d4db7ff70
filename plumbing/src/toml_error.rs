//! A TOML file read into a type, with an error that names the key and the line:
//! `invalid KEY: MESSAGE (line N)`, `unknown key `K` in TABLE (line N)`, or `MESSAGE (line N)`
//! for an error of the file as a whole. The message never quotes a value (a wrong key's value
//! may be a secret).

use serde::de::DeserializeOwned;

/// Reads `text` as a `T`; the error names the key and its line.
pub fn read<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| describe(text, &e, ""))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        describe(text, e.inner(), &path)
    })
}

/// The error `error` of the file `text`, found at the key `path` (`""` or `"."` for the file).
pub fn describe(text: &str, error: &toml::de::Error, path: &str) -> String {
    let mut message = without_quoted_values(&error.message().replace('\n', "; "));
    let unknown = message.starts_with("unknown field");
    if unknown {
        // The message names the key; the list of known keys that follows is long.
        if let Some(cut) = message.find(", expected") {
            message.truncate(cut);
        }
        message = message.replacen("unknown field", "unknown key", 1);
        // The path ends with the unknown key itself: name the table it was found in.
        if let Some((table, _)) = path.rsplit_once('.') {
            message.push_str(&format!(" in {table}"));
        }
    }
    let line = error.span().map(|span| {
        let before = &text.as_bytes()[..span.start.min(text.len())];
        before.iter().filter(|&&b| b == b'\n').count() + 1
    });
    let located = match line {
        Some(line) => format!("{message} (line {line})"),
        None => message,
    };
    if unknown || path.is_empty() || path == "." {
        located
    } else {
        format!("invalid {path}: {located}")
    }
}

/// serde's `invalid type: string "VALUE", expected ...` with the value left out.
fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("string \"") {
        let start = at + "string ".len();
        out.push_str(&rest[..start]);
        // The value ends at the last quote before the message goes on (`", expected`).
        match rest[start + 1..].find("\", ") {
            Some(end) => rest = &rest[start + 1 + end + 1..],
            None => return out + "(value left out)",
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct File {
        name: String,
        #[serde(default)]
        limits: Limits,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Limits {
        rate: Option<u64>,
    }

    #[test]
    fn a_bad_value_names_its_key_and_line_not_the_value() {
        let e = read::<File>("name = \"a\"\n[limits]\nrate = \"s3cret\"\n").unwrap_err();
        assert!(e.starts_with("invalid limits.rate: "), "{e}");
        assert!(e.ends_with("(line 3)"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_named_with_its_table() {
        let e = read::<File>("name = \"a\"\n[limits]\ncolour = 1\n").unwrap_err();
        assert!(
            e.starts_with("unknown key `colour` in limits (line 3)"),
            "{e}"
        );
        let e = read::<File>("name = \"a\"\ncolour = 1\n").unwrap_err();
        assert!(e.starts_with("unknown key `colour` (line 2)"), "{e}");
    }

    #[test]
    fn broken_syntax_gives_its_line() {
        let e = read::<File>("name = \"a\"\n[limits\n").unwrap_err();
        assert!(e.contains("(line 2)"), "{e}");
    }
}
