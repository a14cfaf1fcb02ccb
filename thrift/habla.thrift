// Habla's wire contracts. Every message on RabbitMQ is one of these structs, encoded
// with the Thrift compact protocol. AMQP properties carry the rest: `type` = struct
// name, `message_id` = unique id, `content_type` = application/x-thrift-compact,
// `timestamp` = publish time.
//
// Compatibility rules (enforced by tests/contracts/test_compatibility.py against the
// frozen copy tests/contracts/habla_v1.thrift):
//   * fields are only ever ADDED, with a new id, as `optional`;
//   * an existing id is never renumbered, retyped, renamed or removed;
//   * enum values are only ever added.
// Times are milliseconds since the Unix epoch, UTC.

namespace py habla
namespace java habla.contracts
namespace go habla

// Who wrote a line of a conversation.
enum SenderKind {
  VISITOR = 1,   // the person on the website
  OPERATOR = 2,  // a site operator, from their XMPP client
  SYSTEM = 3,    // Habla itself ("operator joined", "chat ended")
}

// What happened to a visitor (VisitorEvent.kind).
enum VisitorEventKind {
  ARRIVED = 1,         // first page view of a new visit
  LEFT = 2,            // no heartbeat from the widget for the session timeout
  TYPING = 3,          // the visitor is typing in the chat box
  STOPPED_TYPING = 4,  // the visitor cleared the box or stopped for a while
  IDENTIFIED = 5,      // name / email / phone became known (fields below)
  ENDED_CHAT = 6,      // the visitor pressed "end chat"
}

// An operator's XMPP availability (RFC 6121 <show/>, plus unavailable).
enum Availability {
  AVAILABLE = 1,    // no <show/> or <show>chat</show>
  AWAY = 2,         // <show>away</show>
  XA = 3,           // <show>xa</show>
  DND = 4,          // <show>dnd</show>
  UNAVAILABLE = 5,  // presence type="unavailable", or the heartbeat expired
}

// Why a conversation closed (ConversationClosed.reason).
enum CloseReason {
  OPERATOR_ENDED = 1,  // an operator sent !end
  VISITOR_ENDED = 2,   // the visitor pressed "end chat"
  IDLE = 3,            // nobody wrote for the idle timeout
  BLOCKED = 4,         // an operator sent !block
}

// One line of a conversation, in either direction. The sender generates message_id,
// so a retried send is recognised and stored once (idempotency key end to end).
struct ChatMessage {
  1: required string message_id,       // client-generated, unique per message (UUID)
  2: required string conversation_id,  // the conversation this line belongs to
  3: required string site_id,          // site id, Hab.la shape 4324-24618-10-8812
  4: required string visitor_id,       // stable visitor id (also names the visitor's JID)
  5: required SenderKind sender,       // who wrote it
  6: optional string operator_jid,     // bare JID of the operator (sender OPERATOR)
  7: required string body,             // plain text, never HTML; escaped where shown
  8: required i64 sent_at_ms,          // when the sender sent it
  9: required i64 seq,                 // position in the conversation log, 1-based, gap-free
  10: optional string page_url,        // the page the visitor was on (sender VISITOR)
  11: optional string operator_name,   // display name shown to the visitor
  12: optional bool internal = false,  // an operator's !note: kept in the transcript, never shown to the visitor
  13: optional string replaces_message_id, // a correction (XEP-0308): message_id of the line it edits (always the
                                           // first version); body is the new text; the original stays archived
}

// A page the visitor opened; it becomes the visitor's XMPP status line.
struct PageView {
  1: required string visitor_id,        // stable visitor id
  2: required string site_id,           // site id
  3: required string url,               // full URL of the page
  4: optional string title,             // document.title
  5: optional string referrer,          // document.referrer
  6: required i64 viewed_at_ms,         // when the page was shown
  7: optional string conversation_id,   // the visitor's open conversation, if any
  8: optional string user_agent,        // browser's User-Agent
}

// Something happened to a visitor that is not a chat line or a page view.
struct VisitorEvent {
  1: required string visitor_id,       // stable visitor id
  2: required string site_id,          // site id
  3: required VisitorEventKind kind,   // what happened
  4: required i64 at_ms,               // when
  5: optional string conversation_id,  // the open conversation, if any
  6: optional string name,             // IDENTIFIED: the visitor's name
  7: optional string email,            // IDENTIFIED: the visitor's email address
  8: optional string phone,            // IDENTIFIED: the visitor's phone number
}

// An operator's availability changed (one XMPP resource of one operator).
struct OperatorPresence {
  1: required string operator_jid,     // bare JID
  2: optional string resource,         // XMPP resource, if per-resource
  3: required Availability availability,
  4: optional string status_text,      // the operator's own status line
  5: required i64 at_ms,               // when the gateway saw it
  6: required list<string> site_ids,   // sites this operator serves
}

// Something an operator did to a conversation besides writing a line (commands).
struct OperatorAction {
  1: required string action_id,        // unique id (idempotency)
  2: required string conversation_id,
  3: required string site_id,
  4: required string visitor_id,
  5: required string operator_jid,     // bare JID of the operator who acted
  6: required string action,           // "typing", "stopped_typing", "push", "name", "email", "phone", "block", "transfer", "joined"
  7: optional string value,            // the argument (URL for push, name for name …)
  8: required i64 at_ms,
}

// A conversation is over; the transcript worker builds its Transcript from this.
struct ConversationClosed {
  1: required string conversation_id,
  2: required string site_id,
  3: required string visitor_id,
  4: required CloseReason reason,
  5: required i64 last_seq,            // the transcript waits until every line up to here is archived
  6: required i64 closed_at_ms,
  7: optional string operator_jid,     // who ended it (OPERATOR_ENDED, BLOCKED)
}

// One page in a transcript's list of pages the visitor saw.
struct TranscriptPage {
  1: required string url,
  2: optional string title,
  3: required i64 viewed_at_ms,
}

// A finished conversation, complete, for email and for downstream consumers
// (published on the habla.transcripts fanout exchange, once per conversation).
struct Transcript {
  1: required string conversation_id,
  2: required string site_id,
  3: required string visitor_id,
  4: optional string visitor_name,
  5: optional string visitor_email,
  6: optional string visitor_phone,
  7: optional string referrer,               // where the visitor came from
  8: required list<TranscriptPage> pages,    // pages visited, oldest first
  9: required list<ChatMessage> messages,    // every line in seq order, notes included (internal = true)
  10: required list<string> operator_jids,   // operators who took part
  11: required i64 started_at_ms,
  12: required i64 closed_at_ms,
  13: required CloseReason reason,
  14: optional string site_name,
}

// A note left through the widget's offline form while no operator was available.
struct OfflineMessage {
  1: required string message_id,       // client-generated (idempotency)
  2: required string site_id,
  3: required string visitor_id,
  4: required string name,
  5: required string email,            // validated address; used as Reply-To
  6: required string body,
  7: required i64 sent_at_ms,
  8: optional string page_url,
}

// Whether anyone answers on a site; published whenever it changes.
struct SiteStatus {
  1: required string site_id,
  2: required bool online,             // at least one operator available
  3: required i32 operators_available, // distinct operators available
  4: required i64 at_ms,
}

// What the gateway hands a frontend instance for one visitor (habla.deliver, key =
// the frontend instance id that holds the visitor's connection now). A frontend
// that missed one loses nothing: the widget always resumes from the conversation log.
struct VisitorDelivery {
  1: required string visitor_id,
  2: required string site_id,
  3: optional string conversation_id,
  4: optional ChatMessage message,     // a new line in the log (seq set)
  5: optional OperatorAction action,   // typing, push, ended …
  6: optional SiteStatus site_status,  // the site went online / offline
}
