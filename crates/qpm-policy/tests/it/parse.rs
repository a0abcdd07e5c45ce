//! The parser: every construct, every error category, the reference's
//! line and whitespace handling.

use qpm_policy::{ActionKind, DirectiveKind, ErrorKind, Item, PolicyFile, TokenKind};

fn err(text: &str) -> (u32, ErrorKind) {
    let e = PolicyFile::parse(text).expect_err(text);
    (e.line, e.kind)
}

fn one_rule(text: &str) -> qpm_policy::Rule {
    let f = PolicyFile::parse(text).unwrap();
    let mut rules = f.rules().cloned();
    let r = rules.next().expect("one rule");
    assert!(rules.next().is_none());
    r
}

#[test]
fn every_construct() {
    let text = "\
# comment
   # indented comment
qubes.Filecopy * @anyvm @anyvm ask
qubes.Gpg +key work vault allow target=vault user=user notify=yes autostart=no
* * @adminvm * deny notify=no
qubes.OpenURL + @tag:web @dispvm allow target=@dispvm:fedora-dvm
qubes.A * @type:AppVM @dispvm:@tag:dvm ask default_target=@dispvm target=@dispvm
qubes.B * uuid:1234 uuid:00000000-0000-0000-0000-000000000000 allow
qubes.C * @dispvm:dvm @default allow target=dom0
qubes.D * dom0 @default ask default_target=@adminvm
!include include/x
!include-dir extra.d
!include-service qubes.Old +arg include/old
!include-service * * include/old
!compat-4.0
";
    let f = PolicyFile::parse(text).unwrap();
    assert_eq!(f.items.len(), 13);
    let lines: Vec<u32> = f.items.iter().map(Item::line).collect();
    assert_eq!(lines, [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
    let r: Vec<_> = f.rules().collect();
    assert_eq!(r[0].service.as_deref(), Some("qubes.Filecopy"));
    assert_eq!(r[0].argument, None);
    assert_eq!(r[1].argument.as_deref(), Some("+key"));
    assert_eq!(r[1].action.kind, ActionKind::Allow);
    assert_eq!(r[1].action.user.as_deref(), Some("user"));
    assert_eq!(r[1].action.notify, Some(true));
    assert_eq!(r[1].action.autostart, Some(false));
    assert_eq!(r[2].service, None);
    assert_eq!(r[2].source.kind(), TokenKind::AdminVm);
    assert_eq!(r[2].target.kind(), TokenKind::Wildcard);
    assert!(!r[2].action.notify_or_default());
    assert_eq!(
        r[3].action.target.as_ref().unwrap().kind(),
        TokenKind::DispVmName
    );
    assert_eq!(r[4].target.kind(), TokenKind::DispVmTag);
    assert_eq!(r[5].source.kind(), TokenKind::Uuid);
    assert_eq!(r[5].target.kind(), TokenKind::AdminVm);
    assert_eq!(r[6].source.kind(), TokenKind::DispVmName);
    assert_eq!(r[7].source.as_str(), "dom0");
    assert_eq!(r[7].source.kind(), TokenKind::AdminVm);
    let d: Vec<_> = f.directives().map(|d| d.kind.clone()).collect();
    assert_eq!(
        d[0],
        DirectiveKind::Include {
            path: "include/x".into()
        }
    );
    assert_eq!(
        d[1],
        DirectiveKind::IncludeDir {
            path: "extra.d".into()
        }
    );
    assert_eq!(
        d[2],
        DirectiveKind::IncludeService {
            service: Some("qubes.Old".into()),
            argument: Some("+arg".into()),
            path: "include/old".into()
        }
    );
    assert_eq!(
        d[3],
        DirectiveKind::IncludeService {
            service: None,
            argument: None,
            path: "include/old".into()
        }
    );
    assert_eq!(d[4], DirectiveKind::Compat40);
}

#[test]
fn every_error_category() {
    use ErrorKind as E;
    let cases: &[(&str, E)] = &[
        ("qubes.A * work vault", E::FieldCount),
        ("qubes.A * work vault permit", E::InvalidAction),
        ("qubes.A * work vault Allow", E::InvalidAction),
        ("qubes.A * work vault allow notify", E::ParamSyntax),
        ("qubes.A * work vault allow # comment", E::ParamSyntax),
        (
            "qubes.A * work vault allow notify=yes notify=no",
            E::ParamDuplicate,
        ),
        ("qubes.A * work vault allow notify=true", E::ParamBool),
        ("qubes.A * work vault deny autostart=maybe", E::ParamBool),
        ("qubes.A * work vault deny target=vault", E::ParamInvalid),
        (
            "qubes.A * work vault allow default_target=vault",
            E::ParamInvalid,
        ),
        ("qubes.A * work vault allow color=red", E::ParamInvalid),
        ("qubes.A * work vault allow =x", E::ParamInvalid),
        ("qubes.A * work @default allow", E::DefaultAllowNoTarget),
        ("qubes.A * @default vault allow", E::InvalidToken),
        ("qubes.A * @dispvm vault allow", E::InvalidToken),
        ("qubes.A * @tag: vault allow", E::InvalidToken),
        ("qubes.A * work @foo allow", E::InvalidToken),
        ("qubes.A * work @dispvm:@tag: allow", E::InvalidToken),
        ("qubes.A * work vault allow target=", E::InvalidToken),
        ("qubes.A * work vault allow target=@anyvm", E::InvalidToken),
        ("qubes.A * work vault allow target=*", E::InvalidToken),
        (
            "qubes.A * work vault ask default_target=@tag:x",
            E::InvalidToken,
        ),
        (
            "qubes.A * work vault allow target=@dispvm:@tag:x",
            E::InvalidToken,
        ),
        (
            "qubes.A * work vault allow target=@default",
            E::InvalidToken,
        ),
        ("qubes.A+x * work vault allow", E::ServiceChars),
        ("qubes/A * work vault allow", E::ServiceChars),
        ("qubes.A +a/b work vault allow", E::ArgumentChars),
        ("qubes.A x work vault allow", E::ArgumentNoPlus),
        ("* +x work vault allow", E::WildcardServiceArgument),
        ("!include", E::DirectiveParams),
        ("!include a b", E::DirectiveParams),
        ("!include-dir", E::DirectiveParams),
        ("!include-service qubes.A * ", E::DirectiveParams),
        ("!include-service qubes.A x path", E::ArgumentNoPlus),
        ("!include-service * +x path", E::WildcardServiceArgument),
        ("!compat-4.0 now", E::DirectiveParams),
        ("!unknown x", E::InvalidDirective),
        ("!", E::InvalidDirective),
    ];
    for (line, kind) in cases {
        let text = format!("# first\n{line}\n");
        assert_eq!(err(&text), (2, *kind), "{line:?}");
        // The message names the offending part and never panics on odd input.
        let e = PolicyFile::parse(&text).unwrap_err();
        assert!(!e.message.is_empty());
    }
}

#[test]
fn parse_all_reports_every_line() {
    let text = "a * b c allow\nbad\nqubes.A * w v allow\nqubes.A * w v nope\n!nope\n";
    let (file, errors) = PolicyFile::parse_all(text);
    assert_eq!(errors.iter().map(|e| e.line).collect::<Vec<_>>(), [2, 4, 5]);
    assert_eq!(file.items.len(), 2);
    assert_eq!(PolicyFile::parse(text).unwrap_err().line, 2);
}

#[test]
fn crlf_and_bare_cr_and_whitespace() {
    // CRLF: one line break; numbering unchanged.
    let f = PolicyFile::parse("# c\r\nqubes.A * w v allow\r\n\r\nqubes.B * w v deny\r\n").unwrap();
    assert_eq!(f.items.iter().map(Item::line).collect::<Vec<_>>(), [2, 4]);
    // A bare CR ends a line too (Python's universal newlines): the text after
    // it in a comment is a live rule.
    let f = PolicyFile::parse("# harmless\rqubes.A * w v allow\n").unwrap();
    assert_eq!(f.rules().count(), 1);
    assert_eq!(f.items[0].line(), 2);
    // Python whitespace: vertical tab, form feed, \x1c..\x1f, NBSP separate fields.
    let r = one_rule("qubes.A\x0b*\x0cw\x1cv\u{a0}allow\u{3000}notify=no\x1f");
    assert_eq!(r.source.as_str(), "w");
    assert_eq!(r.action.notify, Some(false));
    // A zero-width space does not.
    assert_eq!(err("qubes.A *\u{200b}w v allow\n").1, ErrorKind::FieldCount);
}

#[test]
fn odd_bytes_in_comments_and_long_lines() {
    let f = PolicyFile::parse(
        "#\x00\x01\x07\x1b[31m\x7f é ü \u{202e}\n\x0c# after a form feed\nqubes.A * w v deny\n",
    )
    .unwrap();
    assert_eq!(f.rules().count(), 1);
    // Long lines are fine (the reference has no line limit).
    let long_comment = format!("#{}\nqubes.A * w v deny\n", "x".repeat(200_000));
    assert_eq!(PolicyFile::parse(&long_comment).unwrap().rules().count(), 1);
    let long_user = format!("qubes.A * w v allow user={}\n", "u".repeat(100_000));
    assert_eq!(one_rule(&long_user).action.user.unwrap().len(), 100_000);
    // `#` inside a token is part of it; a trailing comment is a parameter error.
    assert_eq!(one_rule("qubes.A * w#1 v deny").source.as_str(), "w#1");
}

#[test]
fn old_format_lines() {
    use qpm_policy::Format;
    let fmt = Format::Old {
        service: Some("qubes.Gpg".into()),
        argument: None,
    };
    let f = PolicyFile::parse_format(
        "# c\n$anyvm $dispvm:dvm allow,target=$dispvm:dvm,notify=yes\nwork vault ask,default_target=vault\n$include:include/more\n!include include/other\n",
        &fmt,
    )
    .unwrap();
    let r: Vec<_> = f.rules().collect();
    assert_eq!(r[0].source.kind(), TokenKind::AnyVm);
    assert_eq!(r[0].action.target.as_ref().unwrap().as_str(), "@dispvm:dvm");
    assert_eq!(r[0].service.as_deref(), Some("qubes.Gpg"));
    assert_eq!(
        r[1].action.default_target.as_ref().unwrap().as_str(),
        "vault"
    );
    assert_eq!(f.directives().count(), 2);
    for (bad, kind) in [
        ("work vault", ErrorKind::FieldCount),
        ("work", ErrorKind::FieldCount),
        (",", ErrorKind::FieldCount),
        ("work vault permit", ErrorKind::InvalidAction),
        ("!include-dir x", ErrorKind::InvalidDirective),
        ("!compat-4.0", ErrorKind::InvalidDirective),
        ("$include:", ErrorKind::DirectiveParams),
        ("work vault allow,color=red", ErrorKind::ParamInvalid),
    ] {
        let e = PolicyFile::parse_format(&format!("\n{bad}\n"), &fmt).unwrap_err();
        assert_eq!((e.line, e.kind), (2, kind), "{bad:?}");
    }
}
