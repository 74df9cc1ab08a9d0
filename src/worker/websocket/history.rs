//! What one WebSocket remembers of its own responses, for its lifetime: each response's full
//! input and output items, so that a `response.create` naming one of them as
//! `previous_response_id` can be expanded to (previous input + previous output + new items)
//! before it goes to the HTTP upstream, which knows nothing of the socket.
//!
//! Items are kept as their JSON text, shared between the responses of a conversation (a
//! response's items begin with its predecessor's, which are not copied), and bounded: the
//! distinct bytes held never exceed the bound the socket gives (the proxy's request-body
//! limit: a longer conversation could not be sent upstream anyway); past it, the oldest
//! responses are forgotten first. Pure: uses only std and serde_json.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

/// One item of a conversation, as JSON text.
pub(crate) type Item = Arc<str>;

/// Bytes counted for each item besides its text (its pointer and count).
const ITEM_OVERHEAD: usize = 32;

/// A response this socket served (or prewarmed): its id and its full conversation.
struct Remembered {
    id: String,
    items: Arc<[Item]>,
}

/// The responses of one socket, newest last.
pub(crate) struct SocketHistory {
    responses: VecDeque<Remembered>,
    max_bytes: usize,
    bytes: usize,
}

impl SocketHistory {
    pub(crate) fn new(max_bytes: usize) -> Self {
        SocketHistory {
            responses: VecDeque::new(),
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
    /// distinct bytes held exceed the bound (a conversation larger than the bound alone is
    /// not kept at all). Returns the bytes now held.
    pub(crate) fn remember(&mut self, id: String, items: Vec<Item>) -> usize {
        self.responses.retain(|r| r.id != id);
        self.responses.push_back(Remembered {
            id,
            items: items.into(),
        });
        self.bytes = self.count_bytes();
        while self.bytes > self.max_bytes && !self.responses.is_empty() {
            self.responses.pop_front();
            self.bytes = self.count_bytes();
        }
        self.bytes
    }

    /// Forgets the oldest response; false when there is none.
    pub(crate) fn forget_oldest(&mut self) -> bool {
        let forgot = self.responses.pop_front().is_some();
        self.bytes = self.count_bytes();
        forgot
    }

    /// The distinct bytes held (items shared between responses are counted once).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    fn count_bytes(&self) -> usize {
        let mut seen: HashSet<*const u8> = HashSet::new();
        let mut bytes = 0;
        for response in &self.responses {
            bytes += response.id.len() + ITEM_OVERHEAD;
            for item in response.items.iter() {
                if seen.insert(item.as_ptr()) {
                    bytes += item.len() + ITEM_OVERHEAD;
                }
            }
        }
        bytes
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
        // Only the new item and the new id are counted.
        assert_eq!(history.bytes(), one + 7 + ITEM_OVERHEAD + 2 + ITEM_OVERHEAD);
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
