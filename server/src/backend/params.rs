//! The one reader of key-URI query parameters, for every backend.
//!
//! Rules, the same everywhere:
//! - a name is one of the backend's known names, exactly (names are case-sensitive);
//! - each name at most once, and never with an empty value;
//! - errors NEVER echo what the URI holds in a position we do not know. An unknown name is
//!   not shown at all: a secret pasted in the wrong place (`?AKIA…`, `?s.XXXX`, a
//!   mistyped `AWS_SECRET_ACCES_KEY=…` whose name is fine but whose neighbour is not) must
//!   not reach a log. The error lists the known names instead, and names the known one
//!   meant when the unknown name differs from it only in case. Values are never shown.

use url::Url;

/// A URI's parameters, checked against a backend's known names.
#[derive(Debug)]
pub struct Params {
    pairs: Vec<(&'static str, String)>,
}

impl Params {
    /// Reads `url`'s query. `scheme` names the URI kind in errors (`AWS KMS`, `vault`).
    pub fn read(url: &Url, known: &[&'static str], scheme: &str) -> Result<Self, String> {
        let mut pairs: Vec<(&'static str, String)> = Vec::new();
        for (name, value) in url.query_pairs() {
            let Some(&name) = known.iter().find(|k| **k == name) else {
                return Err(unknown(&name, known, scheme));
            };
            if pairs.iter().any(|(k, _)| *k == name) {
                return Err(format!("{scheme} URI parameter {name} is given twice"));
            }
            if value.is_empty() {
                return Err(format!("{scheme} URI parameter {name} is empty"));
            }
            pairs.push((name, value.into_owned()));
        }
        Ok(Self { pairs })
    }

    /// Removes and returns parameter `name`'s value.
    pub fn take(&mut self, name: &str) -> Option<String> {
        let i = self.pairs.iter().position(|(k, _)| *k == name)?;
        Some(self.pairs.swap_remove(i).1)
    }

    /// Whether parameter `name` was given (and not taken yet).
    pub fn has(&self, name: &str) -> bool {
        self.pairs.iter().any(|(k, _)| *k == name)
    }
}

fn unknown(name: &str, known: &[&str], scheme: &str) -> String {
    let hint = known
        .iter()
        .find(|k| k.eq_ignore_ascii_case(name))
        .map(|k| format!(" (names are case-sensitive: did you mean {k}?)"))
        .unwrap_or_default();
    if known.is_empty() {
        return format!("{scheme} URIs take no parameters");
    }
    format!(
        "{scheme} URI has an unknown parameter, not shown as it may hold a secret{hint}; known: {}",
        known.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["REGION", "AUTH", "SECRET"];

    fn read(query: &str) -> Result<Params, String> {
        Params::read(
            &Url::parse(&format!("x:///k?{query}")).unwrap(),
            KNOWN,
            "test",
        )
    }

    #[test]
    fn table() {
        // (query, Ok(REGION's value) or Err(fragment of the message))
        let cases: &[(&str, Result<Option<&str>, &str>)] = &[
            ("REGION=us-east-1", Ok(Some("us-east-1"))),
            ("AUTH=implicit", Ok(None)),
            ("REGION=a%26b", Ok(Some("a&b"))),
            ("REGION=a&REGION=a", Err("given twice")),
            ("REGION=", Err("REGION is empty")),
            ("REGION", Err("REGION is empty")),
            ("region=s3cr3t", Err("did you mean REGION?")),
            ("REGON=s3cr3t", Err("unknown parameter")),
            ("AKIAS3CR3T=1", Err("unknown parameter")),
            ("s3cr3t", Err("unknown parameter")),
            ("%73%33cr3t=x", Err("unknown parameter")),
            ("AUTH=x&eyJs3cr3t=", Err("known: REGION, AUTH, SECRET")),
        ];
        for (query, want) in cases {
            match (read(query), want) {
                (Ok(mut p), Ok(region)) => assert_eq!(p.take("REGION").as_deref(), *region),
                (Err(e), Err(frag)) => {
                    assert!(e.contains(frag), "{query}: {e}");
                    assert!(!e.to_lowercase().contains("s3cr3t"), "{query} echoed: {e}");
                    assert!(!e.contains("AKIA"), "{query} echoed: {e}");
                }
                (got, _) => panic!("{query}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn take_and_has() {
        let mut p = read("REGION=r&AUTH=a").unwrap();
        assert!(p.has("AUTH"));
        assert_eq!(p.take("AUTH").as_deref(), Some("a"));
        assert!(!p.has("AUTH"));
        assert_eq!(p.take("AUTH"), None);
    }

    #[test]
    fn no_parameters_at_all() {
        let e = Params::read(&Url::parse("f:///k?SECRET=1").unwrap(), &[], "file").unwrap_err();
        assert_eq!(e, "file URIs take no parameters");
    }
}
