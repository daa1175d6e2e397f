//! The one function quo-sync adds to CEL: `title()`, because CRMs hold names typed in capitals
//! or lower case and CEL's strings extension only changes case for ASCII letters, wholesale.

use cel::Env;
use cel::common::types::CelString;

/// Registers `<string>.title()`.
pub(super) fn register(env: &mut Env) {
    cel::add_member_overload!(env, fn title: (CelString) -> CelString)
        .expect("title() is declared once");
}

/// `"ADA o'BRIEN-smith".title()` is `"Ada O'Brien-Smith"`: a letter that follows a letter is
/// lower case, any other letter upper case (every language's letters, not only ASCII).
fn title(this: &CelString<'_>) -> CelString<'static> {
    title_case(this).into()
}

/// Title case: each run of letters starts upper case and goes on lower case; an apostrophe
/// inside a word (`o'brien`) starts a new run, as names want.
pub(crate) fn title_case(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_word = false;
    for c in text.chars() {
        if c.is_alphabetic() {
            if in_word {
                out.extend(c.to_lowercase());
            } else {
                out.extend(c.to_uppercase());
            }
            in_word = true;
        } else {
            out.push(c);
            in_word = false;
        }
    }
    out
}
