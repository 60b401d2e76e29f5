//! Who may call what: the role each API route needs, in one table.
//!
//! A pure function of the method and axum's matched route pattern. Every
//! route under `/v1` is listed; `tests/roles.rs` walks the OpenAPI document
//! and fails on a route missing here, so a new route must be classified.

use std::fmt;

use axum::http::Method;

/// A token's role. Each role allows what the one before it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads: every `GET`.
    Viewer,
    /// Reads, runtime lifecycle, plugins and their updates, rollout
    /// steering, state-store batches.
    Operator,
    /// Everything: templates, pins and the admin endpoints too.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Whether a token of this role may do what `needed` allows.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

use Role::{Admin, Operator, Viewer};

/// (method, route pattern as axum matches it, role needed).
pub const ROUTES: &[(&str, &str, Role)] = &[
    // Templates and pins: reads for viewers, changes for admins.
    ("GET", "/v1/templates", Viewer),
    ("GET", "/v1/templates/{name}", Viewer),
    ("PUT", "/v1/templates/{name}", Admin),
    ("DELETE", "/v1/templates/{name}", Admin),
    ("GET", "/v1/templates/{name}/pin", Viewer),
    ("POST", "/v1/templates/{name}/pin", Admin),
    ("DELETE", "/v1/templates/{name}/pin", Admin),
    ("GET", "/v1/templates/{name}/pin/history", Viewer),
    // Runtime lifecycle.
    ("GET", "/v1/runtimes", Viewer),
    ("POST", "/v1/runtimes", Operator),
    ("GET", "/v1/runtimes/{id}", Viewer),
    ("DELETE", "/v1/runtimes/{id}", Operator),
    ("POST", "/v1/runtimes/{id}/start", Operator),
    ("POST", "/v1/runtimes/{id}/stop", Operator),
    ("POST", "/v1/runtimes/{id}/restart", Operator),
    // State stores and readiness.
    ("POST", "/v1/runtimes/{id}/store/batches", Operator),
    ("GET", "/v1/runtimes/{id}/store", Viewer),
    ("GET", "/v1/runtimes/{id}/store/{store}", Viewer),
    ("GET", "/v1/runtimes/{id}/readiness", Viewer),
    // Logs and status.
    ("GET", "/v1/operations", Viewer),
    ("GET", "/v1/status", Viewer),
    ("GET", "/v1/events", Viewer),
    ("GET", "/v1/notifications", Viewer),
    ("GET", "/v1/webhooks/deliveries", Viewer),
    // Plugins and their updates.
    ("POST", "/v1/runtimes/{id}/plugins", Operator),
    ("GET", "/v1/runtimes/{id}/plugins", Viewer),
    ("DELETE", "/v1/runtimes/{id}/plugins/{name}", Operator),
    ("GET", "/v1/plugin-updates", Viewer),
    ("POST", "/v1/plugin-updates/apply", Operator),
    ("POST", "/v1/plugin-updates/{id}/apply", Operator),
    ("POST", "/v1/plugin-updates/{id}/dismiss", Operator),
    // Rollouts.
    ("GET", "/v1/rollouts", Viewer),
    ("GET", "/v1/rollouts/{id}", Viewer),
    ("POST", "/v1/rollouts/{id}/pause", Operator),
    ("POST", "/v1/rollouts/{id}/resume", Operator),
    ("POST", "/v1/rollouts/{id}/abort", Operator),
    // The change stream (server-sent events).
    ("GET", "/v1/stream", Viewer),
    // Admin endpoints: loops run now, host-wide effects.
    ("POST", "/v1/admin/reconcile", Admin),
    ("POST", "/v1/admin/images/refresh", Admin),
    ("POST", "/v1/admin/images/watch", Admin),
    ("POST", "/v1/admin/plugins/sweep", Admin),
];

/// The role a request needs, or `None` for a (method, route) the table
/// does not list (the caller then asks for `admin`: unlisted is closed).
/// `HEAD` needs what `GET` does.
pub fn required_role(method: &Method, route: &str) -> Option<Role> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    ROUTES
        .iter()
        .find(|(m, r, _)| *m == method && *r == route)
        .map(|(_, _, role)| *role)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_for_viewers_and_changes_are_not() {
        for (method, route, role) in ROUTES {
            if *method == "GET" {
                assert_eq!(*role, Viewer, "{method} {route}");
            } else {
                assert!(*role >= Operator, "{method} {route}");
            }
        }
    }

    #[test]
    fn each_route_is_listed_once() {
        let mut seen = std::collections::HashSet::new();
        for (method, route, _) in ROUTES {
            assert!(seen.insert((method, route)), "{method} {route} twice");
        }
    }

    #[test]
    fn lookups() {
        assert_eq!(required_role(&Method::GET, "/v1/runtimes"), Some(Viewer));
        assert_eq!(required_role(&Method::HEAD, "/v1/runtimes"), Some(Viewer));
        assert_eq!(
            required_role(&Method::POST, "/v1/runtimes/{id}/stop"),
            Some(Operator)
        );
        assert_eq!(
            required_role(&Method::PUT, "/v1/templates/{name}"),
            Some(Admin)
        );
        assert_eq!(required_role(&Method::PATCH, "/v1/runtimes"), None);
        assert_eq!(required_role(&Method::GET, "/v1/nothing"), None);
    }

    #[test]
    fn roles_order_and_parse() {
        assert!(Admin.allows(Operator) && Operator.allows(Viewer) && Viewer.allows(Viewer));
        assert!(!Viewer.allows(Operator) && !Operator.allows(Admin));
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Role::parse("Admin"), None);
    }
}
