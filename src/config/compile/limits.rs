//! Named rate limits and delegates. An unchanged definition keeps its running state (limiter
//! budgets, the delegate's answer cache): a reload must not hand every client a fresh burst.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderName;

use super::Cx;
use crate::authz::delegate::Delegate;
use crate::ratelimit::Limit;

/// The rate limits by name.
pub(super) fn rate_limits(
    cx: &mut Cx<'_>,
    clock: &crate::clock::Clock,
) -> BTreeMap<String, Arc<Limit>> {
    let loaded = cx.loaded;
    let mut out = BTreeMap::new();
    for (name, raw) in &loaded.raw.rate_limits {
        let before = cx.previous.and_then(|p| p.rate_limits.get(name));
        match Limit::compile(name, raw, before, clock) {
            Ok(l) => {
                out.insert(name.clone(), l);
            }
            Err(e) => cx.field_errors(&format!("rate_limits.{name}"), [e]),
        }
    }
    out
}

/// The delegates by name; the headers their answers may set join `spoofable`.
pub(super) fn delegates(
    cx: &mut Cx<'_>,
    spoofable: &mut Vec<HeaderName>,
) -> BTreeMap<String, Arc<Delegate>> {
    let loaded = cx.loaded;
    let mut out = BTreeMap::new();
    for (name, raw) in &loaded.raw.delegates {
        let before = cx
            .previous
            .and_then(|p| p.delegates.get(name))
            .map(|d| &**d);
        match Delegate::compile(name, raw, before) {
            Ok(d) => {
                spoofable.extend(d.header_names().iter().cloned());
                out.insert(name.clone(), Arc::new(d));
            }
            Err(e) => cx.field_errors(&format!("delegates.{name}"), [e]),
        }
    }
    out
}
