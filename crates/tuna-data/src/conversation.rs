//! A checked conversation: the typed value every later step (template, masks, packing) takes.

use serde::{Deserialize, Serialize};

/// Who speaks a message. Only these three roles are accepted in training data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message with its content already flattened to text (list-of-parts content is joined).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// For assistant messages: whether the model is trained on this message
    /// (OpenAI's optional `"weight": 0|1`, default 1). Always `true` for other roles, which are never trained.
    #[serde(default = "default_trained")]
    pub trained: bool,
}

fn default_trained() -> bool {
    true
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            trained: true,
        }
    }
}

/// A conversation that passed the structural check: at most one system message and only
/// first, at least one user and one assistant message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub messages: Vec<Message>,
}

impl Conversation {
    /// The system prompt, when the conversation starts with one.
    pub fn system_prompt(&self) -> Option<&str> {
        self.messages
            .first()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
    }
}
