//! Field rules of an Authorization: target or namespace default, rules by
//! identity, namespace, path and method.
use super::{check_method, check_path, check_port};
use crate::config::kinds::AuthorizationSpec;
use crate::config::{ConfigError, Located};

pub(super) fn check_authorization(obj: &Located, a: &AuthorizationSpec) -> Result<(), ConfigError> {
    let mtls = a.mtls.is_some();
    match (&a.target, a.rules.is_empty(), a.default) {
        (None, true, None) if !mtls => {
            return Err(obj.error(
                "spec",
                "set `target` and `rules` (a policy for one service), `default` (the namespace's default) or `mtls`",
            ))
        }
        (None, false, _) => {
            return Err(obj.error("spec.rules", "rules need a `target` service"))
        }
        (Some(_), true, _) if !mtls => {
            return Err(obj.error(
                "spec.rules",
                "a policy with a target needs at least one rule (or `mtls`)",
            ))
        }
        (Some(_), false, Some(_)) => {
            return Err(obj.error(
                "spec.default",
                "`default` belongs in a namespace default without `target`",
            ))
        }
        _ => {}
    }
    if let Some(t) = &a.target {
        if let Some(p) = t.port {
            check_port(p).map_err(|r| obj.error("spec.target.port", r))?;
            if mtls {
                return Err(obj.error(
                    "spec.mtls",
                    "the mTLS mode covers every port of the service: drop `target.port` or put `mtls` in its own Authorization",
                ));
            }
        }
    }
    for (i, rule) in a.rules.iter().enumerate() {
        let base = format!("spec.rules[{i}]");
        super::check_from(obj, &base, &rule.from)?;
        for (j, p) in rule.to.paths.iter().enumerate() {
            check_path(p).map_err(|r| obj.error(format!("{base}.to.paths[{j}]"), r))?;
        }
        for (j, m) in rule.to.methods.iter().enumerate() {
            check_method(m).map_err(|r| obj.error(format!("{base}.to.methods[{j}]"), r))?;
        }
    }
    Ok(())
}
