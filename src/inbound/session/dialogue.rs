//! The client's standing in the SMTP dialogue, kept by the sidecar itself
//! rather than left to the backend: a lenient backend may accept what the
//! RFCs forbid (a RCPT after STARTTLS that lands on the transaction opened
//! before TLS), so the sidecar must never depend on it refusing.
//!
//! - RFC 5321 §4.1.4: EHLO/HELO, RSET and the end of a message end a mail
//!   transaction; MAIL opens one.
//! - RFC 3207 §4.2: after the TLS handshake "the server MUST discard any
//!   knowledge obtained from the client, such as the argument to the EHLO
//!   command", and the client starts over with EHLO; proto-spec §6 says the
//!   same for XPONY.
//! - STARTTLS (like XPONY, proto-spec §3.3 R2) is refused inside a mail
//!   transaction, as Postfix does ("503 5.5.1 Error: MAIL transaction in
//!   progress"): encryption may only start from [`NoTransaction`], and only
//!   [`Dialogue::no_transaction`] makes one.
//!
//! Transitions consume the state and return the next, so what the client
//! said in EHLO moves with it and cannot outlive encryption.

/// What the client said in EHLO/HELO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hello {
    pub name: String,
    /// EHLO rather than HELO.
    pub esmtp: bool,
}

/// A mail transaction the backend opened with its 2xx to MAIL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Transaction {
    /// None when the backend took MAIL without any EHLO/HELO (a plaintext
    /// session; the backend may not require HELO, as Postfix by default).
    hello: Option<Hello>,
}

/// Proof that no mail transaction is open, taken when encryption starts.
#[derive(Debug)]
pub(super) struct NoTransaction(());

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Dialogue {
    /// A new plaintext session before EHLO/HELO: the backend judges the
    /// commands.
    Opened,
    /// Encryption started and no EHLO/HELO since: commands that need the
    /// session's identity are answered `503 5.5.1 Send EHLO first` by the
    /// sidecar, without asking the backend.
    Restarted,
    /// The client said EHLO/HELO; no mail transaction.
    Greeted(Hello),
    /// The backend accepted MAIL and the transaction has not ended.
    Transaction(Transaction),
}

impl Dialogue {
    /// The client sent EHLO/HELO (its reply may still be owed: a
    /// transaction ends only when the backend accepts it, see
    /// [`Dialogue::transaction_ended`]).
    pub fn greeted(self, hello: Hello) -> Dialogue {
        match self {
            Dialogue::Transaction(_) => Dialogue::Transaction(Transaction { hello: Some(hello) }),
            Dialogue::Opened | Dialogue::Restarted | Dialogue::Greeted(_) => {
                Dialogue::Greeted(hello)
            }
        }
    }

    /// The backend accepted MAIL.
    pub fn mail_accepted(self) -> Dialogue {
        match self {
            Dialogue::Opened => Dialogue::Transaction(Transaction { hello: None }),
            Dialogue::Greeted(hello) => Dialogue::Transaction(Transaction { hello: Some(hello) }),
            // A backend that takes a second MAIL keeps the first
            // transaction; MAIL never leaves `Restarted` (refused locally).
            same @ (Dialogue::Transaction(_) | Dialogue::Restarted) => same,
        }
    }

    /// The backend accepted EHLO/HELO or RSET, or answered an end of data.
    pub fn transaction_ended(self) -> Dialogue {
        match self {
            Dialogue::Transaction(Transaction { hello: Some(hello) }) => Dialogue::Greeted(hello),
            Dialogue::Transaction(Transaction { hello: None }) => Dialogue::Opened,
            same => same,
        }
    }

    /// STARTTLS or XPONY completed: nothing from before counts.
    pub fn encrypted(self, _outside: NoTransaction) -> Dialogue {
        Dialogue::Restarted
    }

    /// The proof encryption needs, unless a transaction is open.
    pub fn no_transaction(&self) -> Option<NoTransaction> {
        (!matches!(self, Dialogue::Transaction(_))).then_some(NoTransaction(()))
    }

    pub fn in_transaction(&self) -> bool {
        self.no_transaction().is_none()
    }

    /// Whether the client must say EHLO/HELO before mail commands.
    pub fn needs_ehlo(&self) -> bool {
        matches!(self, Dialogue::Restarted)
    }

    /// What the client said in its last EHLO/HELO that still counts.
    pub fn hello(&self) -> Option<&Hello> {
        match self {
            Dialogue::Greeted(hello) => Some(hello),
            Dialogue::Transaction(t) => t.hello.as_ref(),
            Dialogue::Opened | Dialogue::Restarted => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(name: &str) -> Hello {
        Hello {
            name: name.into(),
            esmtp: true,
        }
    }

    fn transaction(name: Option<&str>) -> Dialogue {
        Dialogue::Transaction(Transaction {
            hello: name.map(hello),
        })
    }

    #[test]
    fn transitions() {
        type Step = fn(Dialogue) -> Dialogue;
        let greet: Step = |d| d.greeted(hello("new"));
        let mail: Step = Dialogue::mail_accepted;
        let end: Step = Dialogue::transaction_ended;
        let greeted = |n| Dialogue::Greeted(hello(n));
        // (from, step, to)
        let cases: Vec<(Dialogue, Step, Dialogue)> = vec![
            (Dialogue::Opened, greet, greeted("new")),
            (Dialogue::Restarted, greet, greeted("new")),
            (greeted("old"), greet, greeted("new")),
            // EHLO inside a transaction ends it only once accepted.
            (transaction(Some("old")), greet, transaction(Some("new"))),
            (Dialogue::Opened, mail, transaction(None)),
            (greeted("a"), mail, transaction(Some("a"))),
            (transaction(Some("a")), mail, transaction(Some("a"))),
            (Dialogue::Restarted, mail, Dialogue::Restarted),
            (transaction(Some("a")), end, greeted("a")),
            (transaction(None), end, Dialogue::Opened),
            (greeted("a"), end, greeted("a")),
            (Dialogue::Restarted, end, Dialogue::Restarted),
        ];
        for (from, step, to) in cases {
            let label = format!("{from:?}");
            assert_eq!(step(from), to, "from {label}");
        }
    }

    #[test]
    fn encryption_needs_no_transaction_and_forgets_the_hello() {
        for d in [
            Dialogue::Opened,
            Dialogue::Restarted,
            Dialogue::Greeted(hello("a")),
        ] {
            let proof = d.no_transaction().expect("outside a transaction");
            let after = d.encrypted(proof);
            assert_eq!(after, Dialogue::Restarted);
            assert!(after.needs_ehlo() && after.hello().is_none());
        }
        for d in [transaction(Some("a")), transaction(None)] {
            assert!(d.no_transaction().is_none() && d.in_transaction());
        }
        let again = Dialogue::Restarted.greeted(hello("b"));
        assert!(!again.needs_ehlo());
        assert_eq!(again.hello(), Some(&hello("b")));
    }
}
