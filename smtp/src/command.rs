//! What an SMTP client says (RFC 5321 §4.1), typed: the [`Command`]s it writes and the
//! [`Step`]s of a session they belong to, each with its timeout ([`Timeouts`]).

use std::{fmt, time::Duration};

/// A step of a client session. Errors, events and timeouts name the step they happened
/// in, in the RFC's words (`RCPT TO`, `end of data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Waiting for a free connection under the (source IP, provider) cap.
    ConnectionSlot,
    /// The TCP connection.
    Connect,
    /// The server's 220 greeting.
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Rset,
    MailFrom,
    RcptTo,
    /// The DATA command, answered 354.
    Data,
    /// The message's bytes and final dot.
    MessageData,
    /// The reply to the final dot: the server's verdict on the message.
    EndOfData,
    Quit,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::ConnectionSlot => "waiting for a connection slot",
            Step::Connect => "connect",
            Step::Greeting => "greeting",
            Step::Ehlo => "EHLO",
            Step::Helo => "HELO",
            Step::StartTls => "STARTTLS",
            Step::Rset => "RSET",
            Step::MailFrom => "MAIL FROM",
            Step::RcptTo => "RCPT TO",
            Step::Data => "DATA",
            Step::MessageData => "message data",
            Step::EndOfData => "end of data",
            Step::Quit => "QUIT",
        }
    }

    /// Whether `code` is the reply that lets the session go on: 354 to DATA, 220 to the
    /// greeting and STARTTLS, any 2xx otherwise.
    pub fn accepts(self, code: u16) -> bool {
        match self {
            Step::Data => code == 354,
            Step::Greeting | Step::StartTls => code == 220,
            _ => code / 100 == 2,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `MAIL FROM` parameters (RFC 6152 8BITMIME, RFC 6531 SMTPUTF8, RFC 1870 SIZE).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailParameters {
    /// `BODY=8BITMIME`: the message has 8-bit bytes.
    pub eight_bit_mime: bool,
    /// `SMTPUTF8`: an address is internationalized.
    pub smtputf8: bool,
    /// `SIZE=`: the message's size in bytes, when the server announced SIZE.
    pub size: Option<usize>,
}

/// A command the client sends. Addresses are written as given: the caller checks them
/// (no CR, LF, `<` or `>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    Ehlo(&'a str),
    Helo(&'a str),
    StartTls,
    Rset,
    MailFrom {
        reverse_path: &'a str,
        parameters: MailParameters,
    },
    RcptTo(&'a str),
    Data,
    Quit,
}

impl Command<'_> {
    /// The step whose reply answers this command.
    pub fn step(&self) -> Step {
        match self {
            Command::Ehlo(_) => Step::Ehlo,
            Command::Helo(_) => Step::Helo,
            Command::StartTls => Step::StartTls,
            Command::Rset => Step::Rset,
            Command::MailFrom { .. } => Step::MailFrom,
            Command::RcptTo(_) => Step::RcptTo,
            Command::Data => Step::Data,
            Command::Quit => Step::Quit,
        }
    }

    /// The command line as sent, CRLF included.
    pub fn line(&self) -> String {
        format!("{self}\r\n")
    }
}

impl fmt::Display for Command<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Ehlo(name) => write!(f, "EHLO {name}"),
            Command::Helo(name) => write!(f, "HELO {name}"),
            Command::StartTls => f.write_str("STARTTLS"),
            Command::Rset => f.write_str("RSET"),
            Command::MailFrom {
                reverse_path,
                parameters,
            } => {
                write!(f, "MAIL FROM:<{reverse_path}>")?;
                if parameters.eight_bit_mime {
                    f.write_str(" BODY=8BITMIME")?;
                }
                if parameters.smtputf8 {
                    f.write_str(" SMTPUTF8")?;
                }
                if let Some(size) = parameters.size {
                    write!(f, " SIZE={size}")?;
                }
                Ok(())
            }
            Command::RcptTo(forward_path) => write!(f, "RCPT TO:<{forward_path}>"),
            Command::Data => f.write_str("DATA"),
            Command::Quit => f.write_str("QUIT"),
        }
    }
}

/// How long each step may take. RFC 5321 §4.5.3.2 suggests minutes per command; a
/// sender with many receivers to serve sets them lower (`[dispatcher]`'s settings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// The TCP connection, and waiting for a connection slot.
    pub connect: Duration,
    /// The greeting, EHLO, STARTTLS (and its handshake) and each envelope command.
    pub command: Duration,
    /// The message data and the reply to its final dot.
    pub data: Duration,
}

/// How long a closing session waits for QUIT's reply; its failure does not matter.
pub const QUIT_TIMEOUT: Duration = Duration::from_secs(2);

impl Timeouts {
    pub fn of(&self, step: Step) -> Duration {
        match step {
            Step::ConnectionSlot | Step::Connect => self.connect,
            Step::MessageData | Step::EndOfData => self.data,
            Step::Quit => QUIT_TIMEOUT,
            _ => self.command,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_written_as_the_rfc_spells_them() {
        let mail = Command::MailFrom {
            reverse_path: "bounce@example.test",
            parameters: MailParameters {
                eight_bit_mime: true,
                smtputf8: false,
                size: Some(1234),
            },
        };
        assert_eq!(
            mail.line(),
            "MAIL FROM:<bounce@example.test> BODY=8BITMIME SIZE=1234\r\n"
        );
        assert_eq!(Command::RcptTo("a@b.test").line(), "RCPT TO:<a@b.test>\r\n");
        assert_eq!(Command::Ehlo("mta.test").to_string(), "EHLO mta.test");
        assert_eq!(mail.step(), Step::MailFrom);
        assert_eq!(Step::EndOfData.to_string(), "end of data");
    }

    #[test]
    fn each_step_knows_its_positive_reply_and_timeout() {
        assert!(Step::Data.accepts(354) && !Step::Data.accepts(250));
        assert!(Step::RcptTo.accepts(251) && !Step::RcptTo.accepts(450));
        assert!(Step::Greeting.accepts(220) && !Step::Greeting.accepts(250));
        let t = Timeouts {
            connect: Duration::from_secs(1),
            command: Duration::from_secs(2),
            data: Duration::from_secs(3),
        };
        assert_eq!(t.of(Step::Connect), t.connect);
        assert_eq!(t.of(Step::RcptTo), t.command);
        assert_eq!(t.of(Step::EndOfData), t.data);
        assert_eq!(t.of(Step::Quit), QUIT_TIMEOUT);
    }
}
