//! Helpers for the crate's unit tests.

/// The size of what a function returns when called with `Args` (a tuple of its argument
/// types), without calling it: for bounding the size of an `async fn`'s future, which is
/// moved whole into its box or task whatever state it is in.
pub(crate) trait ReturnSize<Args> {
    /// `size_of` the return type.
    fn return_size(&self) -> usize;
}

macro_rules! return_size {
    ($($a:ident),*) => {
        impl<F, R, $($a),*> ReturnSize<($($a,)*)> for F where F: Fn($($a),*) -> R {
            fn return_size(&self) -> usize {
                std::mem::size_of::<R>()
            }
        }
    };
}
return_size!(A, B, C);
return_size!(A, B, C, D, E, G, H, I);

/// A principal with only an id and a kind: no issuer, scopes, roles, tenant or claims.
pub(crate) fn principal(
    id: &str,
    kind: crate::authn::PrincipalKind,
) -> crate::authn::principal::Principal {
    crate::authn::principal::Principal {
        id: id.into(),
        kind,
        authenticator: "users".into(),
        issuer: None,
        scopes: Box::default(),
        roles: Box::default(),
        tenant: None,
        api_key_id: None,
        claims: serde_json::Map::new(),
        expires_at: None,
        valid_until: None,
        derived: Default::default(),
    }
}
