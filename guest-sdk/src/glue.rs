//! The glue that `#[handler]` expands to, and the bindings it exports through.

pub use wit_bindgen;

#[allow(missing_docs)]
#[path = "bindings.rs"]
pub mod bindings;

pub use crate::messaging::log_args;
use crate::{HandlerError, Message};
use bindings::ComponentError;

/// The signature of a `#[handler]` function.
pub type MessageFn = fn(Message) -> Result<(), HandlerError>;
/// The signature of a `#[handler(request)]` function.
pub type RequestFn = fn(Message) -> Result<Vec<u8>, HandlerError>;
/// The signature of `handle_message` in a `#[handler]` impl.
pub type MessageMethod<T> = fn(&mut T, Message) -> Result<(), HandlerError>;
/// The signature of `handle_request` in a `#[handler]` impl.
pub type RequestMethod<T> = fn(&mut T, Message) -> Result<Vec<u8>, HandlerError>;

/// Runs a message handler on what the host passed and maps its error to the WIT one.
#[inline]
pub fn handle_message(
    handler: impl FnOnce(Message) -> Result<(), HandlerError>,
    sender: String,
    payload: Vec<u8>,
) -> Result<(), ComponentError> {
    handler(Message::new(sender, payload)).map_err(ComponentError::from)
}

/// Runs a request handler on what the host passed and maps its error to the WIT one.
#[inline]
pub fn handle_request(
    handler: impl FnOnce(Message) -> Result<Vec<u8>, HandlerError>,
    sender: String,
    payload: Vec<u8>,
) -> Result<Vec<u8>, ComponentError> {
    handler(Message::new(sender, payload)).map_err(ComponentError::from)
}

/// The answer of a component that wrote no request handler.
pub fn no_request_handler(_request: Message) -> Result<Vec<u8>, HandlerError> {
    Err(HandlerError::unsupported(
        "this component does not answer requests",
    ))
}

/// Where a `#[handler]` impl keeps its value: empty until the first call creates it with
/// `Default`. wasm32-wasip2 guests are single-threaded, where a thread-local is a plain
/// static; on other targets it keeps the glue sound.
pub type StateCell<T> = std::cell::RefCell<Option<T>>;

/// Runs `handler` on the instance's state, creating the state with `init` on first use.
///
/// Uses the non-panicking `try_` accessors, so a handler that is somehow re-entered fails
/// with `internal` instead of trapping the instance, and the panic machinery stays out of
/// components that do not panic themselves.
#[inline]
pub fn with_state<T, R>(
    state: &'static std::thread::LocalKey<StateCell<T>>,
    init: fn() -> T,
    handler: impl FnOnce(&mut T) -> Result<R, HandlerError>,
) -> Result<R, HandlerError> {
    state
        .try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut slot) => handler(slot.get_or_insert_with(init)),
            Err(_) => Err(HandlerError::internal(
                "the handler's state is in use: a handler was called while another was running",
            )),
        })
        .unwrap_or_else(|_| Err(HandlerError::internal("the handler's state is gone")))
}

/// The state of a `#[handler]` impl, as `Default` makes it. The one place the glue names
/// `Default`, so a type without it gets one error.
#[inline]
pub fn new_state<T: Default>() -> T {
    T::default()
}

/// What a module has when it holds no `#[handler]` function.
pub struct NoMessageHandler;

/// Names that `#[handler]` expansions glob-import into their module. An item of the same
/// name defined by another expansion in the module shadows the default here: this is how
/// a `#[handler]` function finds a `#[handler(request)]` function beside it, and how
/// `#[handler(request)]` checks that there is one.
#[allow(non_upper_case_globals)]
pub mod defaults {
    /// No `#[handler(request)]` function in this module: requests are unsupported.
    pub const only_one_courier_request_handler_per_component: super::RequestFn =
        super::no_request_handler;
    /// No `#[handler]` function in this module.
    pub const only_one_courier_handler_per_component: super::NoMessageHandler =
        super::NoMessageHandler;
}

/// Implemented by what a `#[handler]` function defines in its module, so that
/// `#[handler(request)]` can require one.
#[diagnostic::on_unimplemented(
    message = "`#[handler(request)]` needs a `#[handler]` function in the same module",
    label = "no `#[handler] fn(Message) -> Result<(), HandlerError>` in this module",
    note = "a component answers requests only beside its message handler: put both \
            functions in one module, or use a `#[handler]` impl with `handle_request`"
)]
pub trait MessageHandlerInModule {}

impl MessageHandlerInModule for MessageFn {}

/// Compiles only if `#[handler]` defined a message handler in the module.
pub const fn require_message_handler<T: MessageHandlerInModule>(_handler: &T) {}
