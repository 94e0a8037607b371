//! Roles, permissions and expiries of API keys, with Buntime's names (buntime.md §4.1, §4.2), so
//! Buntime's CLI and cpanel keep working against marina. Error messages start with Buntime's
//! words ("Invalid permission", "Invalid role", "Invalid expiration") and then say more.

use http::StatusCode;
use marina_core::Error;
use serde::Serialize;

/// Every permission a generated key can hold, in Buntime's order (`GET /api/keys/meta`).
pub const ALL_PERMISSIONS: [&str; 12] = [
    "apps:read",
    "apps:install",
    "apps:remove",
    "plugins:read",
    "plugins:install",
    "plugins:remove",
    "plugins:config",
    "keys:read",
    "keys:create",
    "keys:revoke",
    "workers:read",
    "workers:restart",
];

/// The roles, in Buntime's order.
pub const ALL_ROLES: [&str; 4] = ["admin", "editor", "viewer", "custom"];

/// A key's role: a named set of permissions, or `custom` with an explicit list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every permission, including ones added later (the check short-circuits on the role).
    Admin,
    /// Apps, plugins and workers, but not keys: an editor cannot mint itself an admin key.
    Editor,
    /// Read-only, keys included (names and prefixes, never secrets).
    Viewer,
    /// Exactly the permissions listed at creation.
    Custom,
}

impl Role {
    /// Parse a role name; `None` (absent) means Buntime's default, `editor`.
    ///
    /// # Errors
    /// 400 `INVALID_KEY_ROLE` naming the role and the accepted ones.
    pub fn parse(name: Option<&str>) -> Result<Role, Error> {
        match name {
            None => Ok(Role::Editor),
            Some("admin") => Ok(Role::Admin),
            Some("editor") => Ok(Role::Editor),
            Some("viewer") => Ok(Role::Viewer),
            Some("custom") => Ok(Role::Custom),
            Some(other) => Err(Error::bad_request(
                "INVALID_KEY_ROLE",
                format!("Invalid role: {other:?} (expected one of {})", ALL_ROLES.join(", ")),
            )
            .with_data(serde_json::json!({ "path": "role", "expected": ALL_ROLES }))),
        }
    }

    /// The role's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Editor => "editor",
            Role::Viewer => "viewer",
            Role::Custom => "custom",
        }
    }

    /// The permissions a key of this role gets; for `custom`, the validated `requested` list.
    ///
    /// # Errors
    /// 400 `MISSING_PERMISSIONS` for a custom key without any, `INVALID_PERMISSION` for an
    /// unknown name (with its index in `data.path`).
    pub fn permissions(self, requested: Option<&[String]>) -> Result<Vec<String>, Error> {
        let fixed: &[&str] = match self {
            Role::Admin => &ALL_PERMISSIONS,
            Role::Editor => &[
                "apps:read",
                "apps:install",
                "apps:remove",
                "plugins:read",
                "plugins:install",
                "plugins:remove",
                "plugins:config",
                "workers:read",
                "workers:restart",
            ],
            Role::Viewer => &["apps:read", "plugins:read", "workers:read", "keys:read"],
            Role::Custom => {
                let list = requested.unwrap_or_default();
                if list.is_empty() {
                    return Err(Error::bad_request(
                        "MISSING_PERMISSIONS",
                        "Custom keys require at least one permission in \"permissions\"",
                    )
                    .with_data(serde_json::json!({ "path": "permissions" })));
                }
                let mut out: Vec<String> = Vec::with_capacity(list.len());
                for (i, p) in list.iter().enumerate() {
                    if !ALL_PERMISSIONS.contains(&p.as_str()) {
                        return Err(Error::bad_request(
                            "INVALID_PERMISSION",
                            format!("Invalid permission: {p:?} (expected one of {})", ALL_PERMISSIONS.join(", ")),
                        )
                        .with_data(serde_json::json!({ "path": format!("permissions[{i}]") })));
                    }
                    if !out.contains(p) {
                        out.push(p.clone());
                    }
                }
                return Ok(out);
            }
        };
        Ok(fixed.iter().map(|s| s.to_string()).collect())
    }
}

/// `expiresIn` as Buntime writes it: `never`, or a positive count of `d`ays, `w`eeks, `m`onths
/// (30 days) or `y`ears (365 days). Returns the lifetime in seconds (`None` = never expires).
///
/// # Errors
/// 400 `INVALID_EXPIRATION` quoting the value.
pub fn parse_expires_in(value: Option<&str>) -> Result<Option<i64>, Error> {
    let bad = |v: &str| {
        Error::new(
            StatusCode::BAD_REQUEST,
            "INVALID_EXPIRATION",
            format!("Invalid expiration {v:?} in expiresIn: expected \"never\" or a positive number of days, weeks, months or years such as \"30d\", \"2w\", \"6m\", \"1y\""),
        )
        .with_data(serde_json::json!({ "path": "expiresIn" }))
    };
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty() && *v != "never") else {
        return Ok(None);
    };
    let (digits, unit) = v.split_at(v.len() - v.chars().last().map_or(0, char::len_utf8));
    let days_per: i64 = match unit {
        "d" => 1,
        "w" => 7,
        "m" => 30,
        "y" => 365,
        _ => return Err(bad(v)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(v));
    }
    // Anything past 1000 years is a typo, and keeps the arithmetic far from overflow.
    let days = digits
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(days_per))
        .filter(|d| (1..=365_000).contains(d))
        .ok_or_else(|| bad(v))?;
    Ok(Some(days * 86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_have_buntimes_permissions() {
        assert_eq!(Role::parse(None).unwrap(), Role::Editor);
        assert_eq!(Role::Admin.permissions(None).unwrap().len(), 12);
        let editor = Role::Editor.permissions(None).unwrap();
        assert!(editor.contains(&"plugins:config".to_string()));
        assert!(!editor.iter().any(|p| p.starts_with("keys:")));
        assert_eq!(
            Role::Viewer.permissions(None).unwrap(),
            vec!["apps:read", "plugins:read", "workers:read", "keys:read"]
        );
        let custom = Role::Custom.permissions(Some(&["apps:read".into(), "apps:read".into()])).unwrap();
        assert_eq!(custom, vec!["apps:read"]);
    }

    #[test]
    fn bad_roles_and_permissions_are_named() {
        let e = Role::parse(Some("root")).unwrap_err();
        assert_eq!((e.status().as_u16(), e.code()), (400, "INVALID_KEY_ROLE"));
        let e = Role::Custom.permissions(None).unwrap_err();
        assert_eq!(e.code(), "MISSING_PERMISSIONS");
        let e = Role::Custom.permissions(Some(&["apps:read".into(), "apps:nuke".into()])).unwrap_err();
        assert_eq!(e.code(), "INVALID_PERMISSION");
        assert_eq!(e.data().unwrap()["path"], "permissions[1]");
    }

    #[test]
    fn expires_in() {
        assert_eq!(parse_expires_in(None).unwrap(), None);
        assert_eq!(parse_expires_in(Some("never")).unwrap(), None);
        assert_eq!(parse_expires_in(Some("30d")).unwrap(), Some(30 * 86_400));
        assert_eq!(parse_expires_in(Some("2w")).unwrap(), Some(14 * 86_400));
        assert_eq!(parse_expires_in(Some("6m")).unwrap(), Some(180 * 86_400));
        assert_eq!(parse_expires_in(Some("1y")).unwrap(), Some(365 * 86_400));
        for bad in
            ["0d", "d", "1h", "-1d", "1.5d", "99999999999999999999d", "9000000000000000000y", "1001y", "é", "1dd"]
        {
            let e = parse_expires_in(Some(bad)).unwrap_err();
            assert_eq!(e.code(), "INVALID_EXPIRATION", "{bad}");
        }
    }
}
