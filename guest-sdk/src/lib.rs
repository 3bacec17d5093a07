//! courier-sdk: the SDK for Courier component authors.
