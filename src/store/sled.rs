//! The embedded default store, on sled. (Being written.)
