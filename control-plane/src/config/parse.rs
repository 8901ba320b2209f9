//! YAML files → typed objects. Every error names the file, the document, the
//! object and the field path, e.g.
//! `routes.yaml: document 2 (Route "demo/checkout"): spec.http[0].destination.port: must be 1..=65535, got 0`.

use super::kinds::{self, Kind, Metadata, Object, RawDocument, Spec, API_VERSION};
use serde::Deserialize;

/// A problem found in applied configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    /// Where the object came from (file name as given by the client).
    pub source_name: String,
    /// 1-based index of the YAML document in its file; 0 when not tied to one.
    pub document: usize,
    /// `Kind "namespace/name"`, when known.
    pub object: Option<String>,
    /// Dotted path of the offending field, e.g. `spec.ports[0].port`.
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    fn render(&self) -> String {
        let mut out = self.source_name.clone();
        if self.document > 0 {
            out.push_str(&format!(": document {}", self.document));
        }
        if let Some(obj) = &self.object {
            out.push_str(&format!(" ({obj})"));
        }
        if !self.field.is_empty() {
            out.push_str(&format!(": {}", self.field));
        }
        out.push_str(&format!(": {}", self.reason));
        out
    }
}

/// An object plus where it was read from, for later error messages.
#[derive(Debug, Clone)]
pub struct Located {
    pub object: Object,
    pub source_name: String,
    pub document: usize,
}

impl Located {
    pub fn error(&self, field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            source_name: self.source_name.clone(),
            document: self.document,
            object: Some(self.object.key().to_string()),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Largest YAML file one apply may carry.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;
/// Deepest flow nesting (`[` / `{`) a file may use; config kinds need ~6.
pub const MAX_NESTING: usize = 64;

/// Refuses, before any YAML parsing, a file too large or nested too deep:
/// the parser's time grows with the square of the nesting depth, so a small
/// hostile file could otherwise hold the control plane for a minute.
fn check_shape(source_name: &str, yaml: &str) -> Result<(), ConfigError> {
    let err = |reason: String| ConfigError {
        source_name: source_name.to_string(),
        document: 0,
        object: None,
        field: String::new(),
        reason,
    };
    if yaml.len() > MAX_FILE_BYTES {
        return Err(err(format!(
            "file is {} bytes; at most {MAX_FILE_BYTES} per file",
            yaml.len()
        )));
    }
    let (mut depth, mut line) = (0usize, 1usize);
    let mut quote: Option<char> = None;
    let mut chars = yaml.chars().peekable();
    let mut prev = '\n';
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\n') => {
                line += 1;
                // A double-quoted scalar may span lines; others end here.
                if quote == Some('\'') {
                    quote = None;
                }
            }
            (Some('"'), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') if prev.is_whitespace() => {
                // A comment: skip to the end of the line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
                prev = '\n';
                continue;
            }
            (None, '[' | '{') => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(err(format!(
                        "line {line}: nesting deeper than {MAX_NESTING} levels"
                    )));
                }
            }
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    Ok(())
}

/// Decodes every document of a (multi-document) YAML text. Empty documents
/// are skipped. Field-level checks happen here; cross-object checks in
/// `validate`.
pub fn parse_documents(source_name: &str, yaml: &str) -> Result<Vec<Located>, ConfigError> {
    check_shape(source_name, yaml)?;
    let mut out = Vec::new();
    for (index, de) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let document = index + 1;
        let err = |object: Option<String>, field: String, reason: String| ConfigError {
            source_name: source_name.to_string(),
            document,
            object,
            field,
            reason,
        };
        let value = serde_yaml_ng::Value::deserialize(de)
            .map_err(|e| err(None, String::new(), format!("invalid YAML: {e}")))?;
        if value.is_null() {
            continue;
        }
        let raw: RawDocument = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = path_of(&e);
            err(None, field, clean_reason(e.inner().to_string()))
        })?;
        let object_name =
            |kind: &str, md: &Metadata| format!("{kind} \"{}/{}\"", md.namespace, md.name);
        if raw.api_version != API_VERSION {
            return Err(err(
                Some(object_name(&raw.kind, &raw.metadata)),
                "apiVersion".into(),
                format!("must be \"{API_VERSION}\", got \"{}\"", raw.api_version),
            ));
        }
        let Some(kind) = Kind::parse(&raw.kind) else {
            return Err(err(
                None,
                "kind".into(),
                format!(
                    "unknown kind \"{}\" (expected Service, Route or Authorization)",
                    raw.kind
                ),
            ));
        };
        let label = object_name(kind.as_str(), &raw.metadata);
        let spec = decode_spec(kind, raw.spec)
            .map_err(|(field, reason)| err(Some(label.clone()), field, reason))?;
        let located = Located {
            object: Object {
                metadata: raw.metadata,
                spec,
            },
            source_name: source_name.to_string(),
            document,
        };
        super::validate::check_object(&located)?;
        out.push(located);
    }
    Ok(out)
}

fn decode_spec(kind: Kind, spec: serde_yaml_ng::Value) -> Result<Spec, (String, String)> {
    if spec.is_null() {
        return Err(("spec".into(), "missing".into()));
    }
    fn decode<T: serde::de::DeserializeOwned>(
        v: serde_yaml_ng::Value,
    ) -> Result<T, (String, String)> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            let inner = path_of(&e);
            let field = if inner.is_empty() {
                "spec".to_string()
            } else {
                format!("spec.{inner}")
            };
            (field, clean_reason(e.inner().to_string()))
        })
    }
    Ok(match kind {
        Kind::Service => Spec::Service(decode::<kinds::ServiceSpec>(spec)?),
        Kind::Route => Spec::Route(decode::<kinds::RouteSpec>(spec)?),
        Kind::Authorization => Spec::Authorization(decode::<kinds::AuthorizationSpec>(spec)?),
        Kind::Policy => Spec::Policy(Box::new(decode::<kinds::PolicySpec>(spec)?)),
        Kind::Queue => Spec::Queue(Box::new(decode::<kinds::QueueSpec>(spec)?)),
        Kind::QueuePolicy => Spec::QueuePolicy(decode::<kinds::QueuePolicySpec>(spec)?),
    })
}

fn path_of<E>(e: &serde_path_to_error::Error<E>) -> String {
    let p = e.path().to_string();
    if p == "." {
        String::new()
    } else {
        p
    }
}

/// serde_yaml_ng appends " at line L column C" relative to a detached value,
/// which is meaningless after re-decoding; the field path replaces it.
fn clean_reason(reason: String) -> String {
    match reason.find(" at line ") {
        Some(i) => reason[..i].to_string(),
        None => reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_and_huge_files_are_refused_before_parsing() {
        let deep = "[".repeat(100_000);
        let e = parse_documents("deep.yaml", &deep).unwrap_err();
        assert!(e.reason.contains("nesting deeper than 64"), "{e}");
        let big = "#".repeat(MAX_FILE_BYTES + 1);
        let e = parse_documents("big.yaml", &big).unwrap_err();
        assert!(e.reason.contains("per file"), "{e}");
    }

    #[test]
    fn brackets_in_quotes_and_comments_do_not_count_as_nesting() {
        let yaml = format!(
            "# {}\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: a, labels: {{x: \"{}\"}}}}\nspec: {{ports: [{{port: 80}}]}}\n",
            "[".repeat(100),
            "{".repeat(100)
        );
        assert!(check_shape("ok.yaml", &yaml).is_ok());
    }

    #[test]
    fn multi_document_file_yields_every_object() {
        let yaml = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a, namespace: demo}\nspec:\n  ports: [{port: 80, protocol: http}]\n---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: b}\nspec:\n  ports: [{port: 81, protocol: tcp}]\n";
        let objs = parse_documents("f.yaml", yaml).unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[1].object.metadata.namespace, "default");
        assert_eq!(objs[1].document, 2);
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let yaml = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports: [{port: 80, protocol: http, colour: red}]\n";
        let e = parse_documents("svc.yaml", yaml).unwrap_err();
        assert_eq!(e.field, "spec.ports[0].colour");
        assert!(e.reason.contains("unknown field `colour`"), "{}", e.reason);
        assert_eq!(e.to_string().split(':').next(), Some("svc.yaml"));
    }

    #[test]
    fn bad_protocol_names_the_field() {
        let yaml = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports: [{port: 80, protocol: smtp}]\n";
        let e = parse_documents("svc.yaml", yaml).unwrap_err();
        assert_eq!(e.field, "spec.ports[0].protocol");
    }

    #[test]
    fn wrong_api_version_and_kind_are_rejected() {
        let e = parse_documents(
            "x",
            "apiVersion: v2\nkind: Service\nmetadata: {name: a}\nspec: {ports: []}\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "apiVersion");
        let e = parse_documents(
            "x",
            "apiVersion: weft.dev/v1\nkind: Gateway\nmetadata: {name: a}\nspec: {}\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "kind");
    }

    #[test]
    fn invalid_yaml_is_reported_with_document_number() {
        let e = parse_documents("x.yaml", "---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 1, protocol: tcp}]}\n---\nfoo: [unclosed\n").unwrap_err();
        assert!(e.reason.starts_with("invalid YAML"), "{}", e.reason);
    }
}
