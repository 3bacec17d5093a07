//! A component that keeps what it is sent: each message's payload (as text) is added to its
//! state, and a request answers with the state's length as a little-endian `u64`. Its state
//! is serde's, so a live upgrade moves all of it: the benchmark of upgrades with a large
//! state fills it to 1 MiB.
//!
//! A request with a payload is also a command for how this instance's next `save-state`
//! calls behave, so tests can see what the host does about a state that cannot be saved
//! (the reply is the length, as for any request):
//! - `save:fail`: serde fails to write the state, which the SDK turns into a trap;
//! - `save:sleep:<ms>`: sleep in a WASI host call before writing it;
//! - `save:spin`: loop without end, calling nothing;
//! - `save:huge:<bytes>`: write a state of that many bytes instead of the real one.
//!
//! The command belongs to the instance, not to its state: an instance that takes over a
//! saved state saves well.

use std::time::Duration;

use courier_sdk::prelude::*;
use courier_sdk::serde::ser::Error as _;
use courier_sdk::serde::{Deserialize, Serialize, Serializer};

/// Everything received, as one string (CBOR writes a string's bytes as they are, where a
/// `Vec<u8>` would be an array of numbers).
#[derive(Default, Deserialize)]
#[serde(crate = "courier_sdk::serde")]
struct Keeper {
    kept: String,
    #[serde(skip)]
    saving: Saving,
}

/// How `save-state` behaves, as the last `save:` command said.
#[derive(Default, Clone, Copy)]
enum Saving {
    #[default]
    Well,
    Fail,
    Sleep(u64),
    Spin,
    Huge(usize),
}

/// What is saved: the same shape `Keeper` is read from.
#[derive(Serialize)]
#[serde(crate = "courier_sdk::serde")]
struct Kept<'a> {
    kept: &'a str,
}

impl Serialize for Keeper {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.saving {
            Saving::Well => {}
            Saving::Fail => return Err(S::Error::custom("keeper was told to fail saving")),
            Saving::Sleep(ms) => std::thread::sleep(Duration::from_millis(ms)),
            Saving::Spin => loop {
                std::hint::black_box(());
            },
            Saving::Huge(bytes) => {
                return Kept {
                    kept: &"x".repeat(bytes),
                }
                .serialize(serializer);
            }
        }
        Kept { kept: &self.kept }.serialize(serializer)
    }
}

#[handler]
impl Keeper {
    fn handle_message(&mut self, msg: Message) -> Result<(), HandlerError> {
        self.kept.push_str(&String::from_utf8_lossy(msg.payload()));
        Ok(())
    }

    fn handle_request(&mut self, req: Message) -> Result<Vec<u8>, HandlerError> {
        if !req.payload().is_empty() {
            self.saving = saving(req.text()?)?;
        }
        Ok((self.kept.len() as u64).to_le_bytes().to_vec())
    }
}

/// The `save:` command `command` names.
fn saving(command: &str) -> Result<Saving, HandlerError> {
    let number = |text: &str| {
        text.parse()
            .map_err(|_| HandlerError::invalid(format!("not a number: {text}")))
    };
    Ok(match command.split(':').collect::<Vec<_>>()[..] {
        ["save", "fail"] => Saving::Fail,
        ["save", "sleep", ms] => Saving::Sleep(number(ms)?),
        ["save", "spin"] => Saving::Spin,
        ["save", "huge", bytes] => Saving::Huge(number(bytes)? as usize),
        _ => return Err(HandlerError::invalid(format!("unknown command: {command}"))),
    })
}
