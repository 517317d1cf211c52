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
