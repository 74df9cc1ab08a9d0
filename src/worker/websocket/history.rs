//! What one WebSocket remembers of its own responses, for its lifetime: each response's full
//! input and output items, so that a `response.create` naming one of them as
//! `previous_response_id` can be expanded to (previous input + previous output + new items)
//! before it goes to the HTTP upstream, which knows nothing of the socket.
//!
//! Items are kept as their JSON text, shared between the responses of a conversation (a
//! response's items begin with its predecessor's, whose texts are not copied), and bounded:
//! the bytes held — each response's id and list of items, each distinct text once — never
//! exceed the bound the socket gives (the proxy's request-body
//! limit: a longer conversation could not be sent upstream anyway); past it, the oldest
//! responses are forgotten first. Pure: uses only std and serde_json.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// One item of a conversation, as JSON text.
pub(crate) type Item = Arc<str>;

/// Bytes counted for each distinct item besides its text (its allocation's counts).
const ITEM_OVERHEAD: usize = 32;

/// Bytes counted for each response besides its id and its list of items.
const RESPONSE_OVERHEAD: usize = 32;

/// A response this socket served (or prewarmed): its id and its full conversation.
struct Remembered {
    id: String,
    items: Arc<[Item]>,
}

impl Remembered {
    /// What the response itself holds: its id and its list (a pointer and length an item,
    /// whether or not the item is shared), not the items' texts.
    fn own_bytes(&self) -> usize {
        self.id.len() + RESPONSE_OVERHEAD + self.items.len() * std::mem::size_of::<Item>()
    }
}

/// The responses of one socket, newest last.
pub(crate) struct SocketHistory {
    responses: VecDeque<Remembered>,
    /// How many remembered responses hold each distinct item (keyed by its text's address,
    /// which stays the item's while any response holds it), so that remembering and
    /// forgetting cost the size of that one response, not of the whole history.
    holders: HashMap<usize, usize>,
    max_bytes: usize,
    bytes: usize,
}

impl SocketHistory {
    pub(crate) fn new(max_bytes: usize) -> Self {
        SocketHistory {
            responses: VecDeque::new(),
            holders: HashMap::new(),
            max_bytes,
            bytes: 0,
        }
    }

    /// The full conversation (input and output) of response `id`, if remembered.
    pub(crate) fn conversation(&self, id: &str) -> Option<Arc<[Item]>> {
        self.responses
            .iter()
            .rev()
            .find(|r| r.id == id)
            .map(|r| r.items.clone())
    }

    /// Remembers response `id` with its full `items`; forgets the oldest responses while the
    /// bytes held exceed the bound (a conversation larger than the bound alone is not kept at
    /// all). Returns the bytes now held.
    pub(crate) fn remember(&mut self, id: String, items: Vec<Item>) -> usize {
        if let Some(at) = self.responses.iter().position(|r| r.id == id) {
            if let Some(old) = self.responses.remove(at) {
                self.release(&old);
            }
        }
        let response = Remembered {
            id,
            items: items.into(),
        };
        self.hold(&response);
        self.responses.push_back(response);
        while self.bytes > self.max_bytes && self.forget_oldest() {}
        self.bytes
    }

    /// Forgets the oldest response; false when there is none.
    pub(crate) fn forget_oldest(&mut self) -> bool {
        match self.responses.pop_front() {
            Some(oldest) => {
                self.release(&oldest);
                true
            }
            None => false,
        }
    }

    /// The bytes held: each response's id and list of items, and each distinct item's text
    /// once (items shared between responses are counted once).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    fn hold(&mut self, response: &Remembered) {
        self.bytes += response.own_bytes();
        for item in response.items.iter() {
            let holders = self.holders.entry(item.as_ptr() as usize).or_insert(0);
            if *holders == 0 {
                self.bytes += item.len() + ITEM_OVERHEAD;
            }
            *holders += 1;
        }
    }

    fn release(&mut self, response: &Remembered) {
        self.bytes -= response.own_bytes();
        for item in response.items.iter() {
            let key = item.as_ptr() as usize;
            if let Some(holders) = self.holders.get_mut(&key) {
                *holders -= 1;
                if *holders == 0 {
                    self.holders.remove(&key);
                    self.bytes -= item.len() + ITEM_OVERHEAD;
                }
            }
        }
    }
}

/// The `input` of a Responses request as items: an array as it is, a string as one user
/// message; `None` for anything else.
pub(crate) fn input_items(input: Option<&serde_json::Value>) -> Option<Vec<Item>> {
    match input {
        None | Some(serde_json::Value::Null) => Some(Vec::new()),
        Some(serde_json::Value::String(text)) => Some(vec![serde_json::json!({
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        })
        .to_string()
        .into()]),
        Some(serde_json::Value::Array(items)) => {
            Some(items.iter().map(|i| i.to_string().into()).collect())
        }
        Some(_) => None,
    }
}

/// A request body: the JSON object `fields` (without `input`) with `input` set to `items`.
pub(crate) fn body_with_input(
    fields: &serde_json::Map<String, serde_json::Value>,
    items: &[Item],
) -> Vec<u8> {
    let mut body = serde_json::to_vec(fields).unwrap_or_else(|_| b"{}".to_vec());
    body.pop(); // the closing brace
    if fields.is_empty() {
        body.extend_from_slice(b"\"input\":[");
    } else {
        body.extend_from_slice(b",\"input\":[");
    }
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item.as_bytes());
    }
    body.extend_from_slice(b"]}");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(texts: &[&str]) -> Vec<Item> {
        texts.iter().map(|t| Arc::from(*t)).collect()
    }

    #[test]
    fn a_conversation_is_found_by_id_and_shares_its_predecessors_items() {
        let mut history = SocketHistory::new(10_000);
        let first = items(&["{\"a\":1}", "{\"b\":2}"]);
        history.remember("r1".into(), first.clone());
        let one = history.bytes();
        let mut second: Vec<Item> = history.conversation("r1").unwrap().to_vec();
        second.push(Arc::from("{\"c\":3}"));
        history.remember("r2".into(), second);
        // The new item's text, the new id and the new response's list of three items.
        let list = 3 * std::mem::size_of::<Item>();
        assert_eq!(
            history.bytes(),
            one + 7 + ITEM_OVERHEAD + 2 + RESPONSE_OVERHEAD + list
        );
        assert_eq!(history.conversation("r2").unwrap().len(), 3);
        assert!(history.conversation("r3").is_none());
    }

    #[test]
    fn the_oldest_responses_are_forgotten_past_the_bound() {
        let mut history = SocketHistory::new(300);
        for n in 0..10 {
            let item = format!("{{\"text\":\"{}\"}}", "x".repeat(50 + n));
            history.remember(format!("r{n}"), vec![Arc::from(item.as_str())]);
            assert!(history.bytes() <= 300, "{}", history.bytes());
        }
        assert!(history.conversation("r9").is_some());
        assert!(history.conversation("r0").is_none());
        // A conversation larger than the bound is not kept.
        history.remember("big".into(), vec![Arc::from("y".repeat(400).as_str())]);
        assert!(history.conversation("big").is_none());
        assert_eq!(history.bytes(), 0);
    }

    /// Many responses naming the same long conversation (prewarms repeating a
    /// `previous_response_id`) each count their own list of items, so they cannot hold more
    /// than the bound; and the running count equals a count from scratch.
    #[test]
    fn responses_sharing_a_conversation_still_count_their_lists() {
        let bound = 64 * 1024;
        let mut history = SocketHistory::new(bound);
        let conversation = items(&["{}"; 1000]);
        history.remember("r0".into(), conversation);
        for n in 1..2_000 {
            let shared = history
                .conversation(&format!("r{}", n - 1))
                .map(|items| items.to_vec())
                .unwrap_or_default();
            history.remember(format!("r{n}"), shared);
            assert!(history.bytes() <= bound, "{}", history.bytes());
        }
        // 1000 items are 16 KB of list each: at most four such responses fit.
        assert!(history.responses.len() <= 4, "{}", history.responses.len());
        let mut recount = 0;
        let mut seen = std::collections::HashSet::new();
        for response in &history.responses {
            recount += response.own_bytes();
            for item in response.items.iter() {
                if seen.insert(item.as_ptr()) {
                    recount += item.len() + ITEM_OVERHEAD;
                }
            }
        }
        assert_eq!(history.bytes(), recount);
        while history.forget_oldest() {}
        assert_eq!(history.bytes(), 0);
        assert!(history.holders.is_empty());
    }

    #[test]
    fn the_body_gets_the_expanded_input() {
        let mut fields = serde_json::Map::new();
        let empty = body_with_input(&fields, &items(&["1", "2"]));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&empty).unwrap(),
            serde_json::json!({"input": [1, 2]})
        );
        fields.insert("model".into(), "m".into());
        let body = body_with_input(&fields, &items(&[]));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"model": "m", "input": []})
        );
        let text = input_items(Some(&serde_json::json!("hi"))).unwrap();
        assert!(text[0].contains("\"role\":\"user\""));
        assert!(input_items(Some(&serde_json::json!(3))).is_none());
    }
}
