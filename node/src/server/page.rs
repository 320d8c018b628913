//! Pages of a list: `page_size`, `page_token`, `next_page_token`, the same
//! for every list call.
//!
//! Runs and log lines page through the store (see `Api::list_runs` and
//! `Api::get_run_logs`). The other lists (integrations, credentials,
//! triggers, tenants, tokens) are read whole from the store, sorted by a
//! key unique within the list, and cut here: the token names the last key
//! of the page before, so a page goes on after it even when items were
//! added or deleted in between.

use tonic::Status;

/// Items in a page when a call asks for none in particular, and the most
/// one page holds: a caller cannot have the node send everything in one
/// answer.
pub const DEFAULT_SIZE: usize = 100;
pub const MAX_SIZE: usize = 1_000;

/// The size of a page asked for as `page_size`.
pub fn size(requested: u32) -> usize {
    match requested {
        0 => DEFAULT_SIZE,
        n => usize::try_from(n).unwrap_or(MAX_SIZE).min(MAX_SIZE),
    }
}

/// The page of `items` after `page_token`, at most `page_size` of them in
/// the order of `key`, and the token of the next page (empty: this is the
/// last). `call` names the call in the error for a token it did not give.
pub fn cut<T>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> String,
    page_size: u32,
    page_token: &str,
    call: &str,
) -> Result<(Vec<T>, String), Status> {
    let after = decode(page_token)
        .ok_or_else(|| Status::invalid_argument(format!("page_token is not one {call} gave")))?;
    items.sort_by_cached_key(|item| key(item));
    if let Some(after) = after {
        items.retain(|item| key(item) > after);
    }
    let size = size(page_size);
    let next = if items.len() > size {
        items.truncate(size);
        items
            .last()
            .map(|last| encode(&key(last)))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok((items, next))
}

/// A token: the key in hex, so that it is plain ASCII whatever the key.
fn encode(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

/// `Some(None)` for no token, `Some(Some(key))` for a token, `None` for
/// one this module did not write.
fn decode(token: &str) -> Option<Option<String>> {
    if token.is_empty() {
        return Some(None);
    }
    if !token.len().is_multiple_of(2) || token.len() > 2048 {
        return None;
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok().map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_gets_the_default_or_what_it_asks_up_to_the_maximum() {
        assert_eq!(size(0), DEFAULT_SIZE);
        assert_eq!(size(7), 7);
        assert_eq!(size(1_000), 1_000);
        assert_eq!(size(1_001), MAX_SIZE);
        assert_eq!(size(u32::MAX), MAX_SIZE);
    }

    #[test]
    fn pages_cover_the_list_once_in_key_order() {
        let items: Vec<String> = (0..25).rev().map(|i| format!("item-{i:02}")).collect();
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let (page, next) =
                cut(items.clone(), Clone::clone, 10, &token, "ListThings").expect("a page");
            pages += 1;
            seen.extend(page);
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(pages, 3);
        let mut expected = items;
        expected.sort();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_page_goes_on_after_its_last_key_when_the_list_changed() {
        let (_, token) = cut(vec!["a", "b", "c"], |s| s.to_string(), 2, "", "L").expect("page 1");
        // "b" was deleted and "bb" added before the next call.
        let (page, next) =
            cut(vec!["a", "bb", "c"], |s| s.to_string(), 2, &token, "L").expect("page 2");
        assert_eq!(page, ["bb", "c"]);
        assert!(next.is_empty());
    }

    #[test]
    fn a_token_the_node_did_not_give_is_refused_with_the_call_named() {
        for token in ["zz", "abc", "ff"] {
            let err =
                cut(vec!["a"], |s| s.to_string(), 1, token, "ListCredentials").expect_err(token);
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert_eq!(err.message(), "page_token is not one ListCredentials gave");
        }
    }
}
