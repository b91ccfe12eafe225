"""Defences outside the model: checks written in code, which the text they judge cannot talk to.

A model that reads attacker-written text can be steered by it, whatever its prompt says
(docs/injection.md). The layers here never ask the model to resist. Each one can only *raise* a
verdict, or *add* to a list, never lower or remove what the model or another layer said:

- ``floor`` (``RULES``): a table of patterns over the input, each standing for an ATT&CK technique,
  gives a minimum verdict. The final verdict is the more severe of the floor's and the model's.
- ``detect`` (``injection_hits``): text written for an AI or an analyst is evidence in itself:
  template turn markers, an answer forged in the output's own form, prose addressed to an
  assistant or a reviewer, invisible or bidirectional characters, letter-spaced words. A hit
  raises the verdict to at least suspicious, and the matched text is kept as an indicator.
- ``union``: on IOC items, the regex's candidates are added to the model's answer, so the model can
  add indicators but never hide one the regex found.
- ``differential`` (``view``): the input is read a second time with its prose, comments, padding
  and anything after a template marker taken out, by a second call of the model; the more severe
  verdict wins, and a view more severe than the whole input is itself an injection hit.

``layered`` is all four. Every guard of this module also tokenizes as ``escape`` does, so no input
text can become a template token. The module is the standard library only: the python export
carries its source, so a deployment judges exactly as the trial did.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

LAYERS = ("floor", "detect", "union", "differential")
# The input_guard values this module implements, and the layers each one turns on.
GUARD_LAYERS: dict[str, tuple[str, ...]] = {**{layer: (layer,) for layer in LAYERS}, "layered": LAYERS}
VERDICT_ORDER = ("benign", "suspicious", "malicious")  # the severity a layer can raise to


def layers(guard: str) -> tuple[str, ...]:
    """The layers ``guard`` turns on (none for ``none``, ``escape``, ``delimit``, ``sandwich``)."""
    return GUARD_LAYERS.get(guard, ())


def escapes(guard: str) -> bool:
    """Whether ``guard`` tokenizes message contents as text (``escape``, and every layered guard)."""
    return guard == "escape" or guard in GUARD_LAYERS


@dataclass(frozen=True)
class Rule:
    id: str
    technique: str  # the ATT&CK technique the pattern stands for
    verdict: str  # the minimum verdict when it matches: suspicious or malicious
    pattern: str  # a case-insensitive regular expression over the normalised input
    what: str


_URL = r"(?:https?|ftp)://"
_RAW_IP_URL = r"https?://\d{1,3}(?:\.\d{1,3}){3}"
_USER_DIRS = r"(?:\\users\\public\\|\\appdata\\|\\temp\\|\\programdata\\|\\perflogs\\|/tmp/|/dev/shm/|/var/tmp/)"
_SHELLS = r"(?:cmd(?:\.exe)?|powershell(?:\.exe)?|pwsh|wscript(?:\.exe)?|cscript(?:\.exe)?|mshta(?:\.exe)?|" \
          r"rundll32(?:\.exe)?|regsvr32(?:\.exe)?|bash|sh|zsh)"

# Written for this project from the techniques' public descriptions (MITRE ATT&CK v18.1) and the
# behaviour SigmaHQ's process-creation rules look for; no rule text is copied. SigmaHQ's rules
# could not be used as they are: pySigma converts rules to a SIEM's query language and has no
# matcher of its own, and its process-creation rules are written against fields (Image,
# ParentImage, CommandLine) that a bare command line does not split into reliably.
RULES: tuple[Rule, ...] = (
    # Execution and download cradles.
    Rule("ps-encoded", "T1027.010", "malicious", r"\b(?:powershell|pwsh)\S*\s.*?(?<![\w-])-e(?:nc?|ncodedcommand)?\s+[A-Za-z0-9+/=]{16,}",
         "PowerShell with an encoded command"),
    Rule("ps-cradle", "T1059.001", "malicious",
         r"(?:\biex\b|invoke-expression).*(?:downloadstring|downloadfile|webclient|\biwr\b|invoke-webrequest|\birm\b|"
         r"invoke-restmethod|start-bitstransfer)|(?:downloadstring|downloadfile|\biwr\b|invoke-webrequest|\birm\b|"
         r"invoke-restmethod).*\|\s*(?:iex|invoke-expression)\b",
         "PowerShell download cradle (download, then run in memory)"),
    Rule("certutil-fetch", "T1105", "malicious", r"\bcertutil(?:\.exe)?\b.*(?:-urlcache|-verifyctl).*" + _URL,
         "certutil fetching a URL"),
    Rule("certutil-decode", "T1140", "suspicious", r"\bcertutil(?:\.exe)?\b.*-decode(?:hex)?\b", "certutil decoding a file"),
    Rule("bitsadmin-fetch", "T1197", "malicious", r"\bbitsadmin(?:\.exe)?\b.*/(?:transfer|addfile)\b.*" + _URL,
         "bitsadmin fetching a URL"),
    Rule("mshta-remote", "T1218.005", "malicious", r"\bmshta(?:\.exe)?\b.*(?:" + _URL + r"|javascript:|vbscript:)",
         "mshta running remote or inline script"),
    Rule("regsvr32-remote", "T1218.010", "malicious", r"\bregsvr32(?:\.exe)?\b.*(?:/i:\s*" + _URL + r"|scrobj\.dll)",
         "regsvr32 loading a remote scriptlet"),
    Rule("rundll32-script", "T1218.011", "malicious", r"\brundll32(?:\.exe)?\b.*(?:javascript:|" + _URL + r")",
         "rundll32 running script or a URL"),
    Rule("fetch-pipe-shell", "T1059.004", "suspicious", r"\b(?:curl|wget|fetch)\b[^|]*\|\s*(?:sudo\s+)?(?:ba|z|da)?sh\b",
         "a download piped into a shell"),
    Rule("decode-pipe-shell", "T1140", "malicious", r"base64\s+(?:-d|--decode)\b.*\|\s*(?:sudo\s+)?(?:ba|z)?sh\b",
         "decoded text piped into a shell"),
    Rule("fetch-chmod-run", "T1105", "malicious", r"\b(?:curl|wget)\b.*" + _URL + r".*chmod\s+\+?[0-7]*x",
         "a download made executable"),
    Rule("raw-ip-fetch", "T1105", "suspicious", r"(?:\b(?:curl|wget|iwr|invoke-webrequest|certutil|bitsadmin|"
         r"scp|tftp)\b.*" + _RAW_IP_URL + r")", "a transfer tool fetching from a bare IP address"),
    Rule("office-child", "T1204.002", "malicious",
         r"\b(?:winword|excel|powerpnt|outlook|onenote|msaccess|mspub)\.exe\s*->\s*" + _SHELLS + r"\b",
         "an Office program starting a shell or a script host"),
    Rule("web-shell", "T1505.003", "suspicious",
         r"\b(?:w3wp|httpd|apache2?|nginx|php-fpm|php-cgi|tomcat\d*|java)(?:\.exe)?\s*->\s*" + _SHELLS + r"\b",
         "a web server starting a shell"),
    Rule("script-from-mail", "T1566.001", "malicious", r"\b(?:wscript|cscript)(?:\.exe)?\b.*(?:inetcache|content\.outlook|"
         r"\\downloads\\|\\temp\\).*\.(?:js|jse|vbs|vbe|wsf|hta)\b", "a script host running a mailed or downloaded script"),
    # Credential access.
    Rule("lsass-dump", "T1003.001", "malicious",
         r"(?:comsvcs(?:\.dll)?\W.*minidump|\bprocdump\S*\s.*\blsass|\blsass\S*\.dmp\b|out-minidump)",
         "a dump of LSASS memory"),
    Rule("mimikatz", "T1003.001", "malicious",
         r"(?:sekurlsa::|lsadump::|privilege::debug|kerberos::|crypto::|dpapi::|\bmimikatz\b|invoke-mimikatz)",
         "Mimikatz commands"),
    Rule("hive-save", "T1003.002", "malicious", r"\breg(?:\.exe)?\s+(?:save|export)\s+hklm\\(?:sam|system|security)\b",
         "the SAM, SYSTEM or SECURITY hive saved"),
    Rule("ntds", "T1003.003", "malicious", r"(?:\bntds\.dit\b|\bntdsutil\b.*\bifm\b)", "the domain's credential database"),
    Rule("kerberoast", "T1558.003", "malicious", r"(?:\brubeus\S*\s+(?:kerberoast|asreproast|dump|tgtdeleg)|"
         r"invoke-kerberoast|getuserspns)", "Kerberos ticket theft"),
    Rule("shadow-file", "T1003.008", "suspicious", r"/etc/(?:shadow|gshadow)\b", "the shadow password file"),
    Rule("shadow-exfil", "T1048", "malicious", r"(?:\b(?:curl|wget|nc|ncat|scp)\b.*/etc/shadow|/etc/shadow.*\b(?:curl|"
         r"nc|ncat|scp)\b)", "the shadow password file sent out"),
    Rule("keychain", "T1555.001", "suspicious", r"\bsecurity\s+(?:find-(?:generic|internet)-password|dump-keychain)\b",
         "the macOS keychain read"),
    Rule("password-prompt", "T1056.002", "malicious", r"\bosascript\b.*display dialog.*password",
         "a forged password prompt"),
    Rule("ssh-keys-archived", "T1552.004", "suspicious", r"\b(?:tar|zip|7z|rar)\b.*(?:\.ssh\b|id_rsa|id_ed25519)",
         "private keys archived"),
    # Defence evasion and impact.
    Rule("shadow-delete", "T1490", "malicious", r"(?:\bvssadmin(?:\.exe)?\b.*\bdelete\s+shadows|\bwmic\b.*shadowcopy\s+delete|"
         r"\bwbadmin\b.*delete\s+(?:catalog|systemstatebackup)|\bbcdedit\b.*recoveryenabled\s+no|"
         r"get-wmiobject\s+win32_shadowcopy.*delete)", "backups or shadow copies deleted"),
    Rule("backup-off", "T1490", "suspicious", r"\btmutil\s+disable\b", "Time Machine turned off"),
    Rule("amsi-bypass", "T1562.001", "malicious", r"(?:amsiutils|amsiinitfailed|amsiscanbuffer)", "AMSI disabled"),
    Rule("defender-off", "T1562.001", "malicious", r"set-mppreference\b.*-disable(?:realtimemonitoring|behaviormonitoring|"
         r"ioavprotection)\s+\$?(?:true|1)", "Defender's protection turned off"),
    Rule("security-off", "T1562.001", "suspicious", r"(?:\bsetenforce\s+0\b|\bspctl\s+--master-disable\b|\bcsrutil\s+disable\b|"
         r"add-mppreference\b.*-exclusion|\bufw\s+disable\b|\bsystemctl\s+(?:stop|disable)\s+(?:auditd|apparmor|falcon|"
         r"osqueryd))", "a security control turned off"),
    Rule("log-clear", "T1070.001", "suspicious", r"(?:\bwevtutil(?:\.exe)?\s+(?:cl|clear-log)\b|\bclear-eventlog\b|"
         r"\bhistory\s+-c\b|\bunset\s+histfile\b|rm\s+(?:-\w+\s+)*\S*\.bash_history|>\s*/var/log/(?:auth|secure|syslog))",
         "logs or shell history cleared"),
    Rule("test-signing", "T1553.006", "suspicious", r"\bbcdedit\b.*(?:testsigning\s+on|nointegritychecks\s+on)",
         "driver signature checks weakened"),
    Rule("firewall-open", "T1562.004", "suspicious", r"(?:\bnetsh\b.*firewall.*(?:action=allow|opmode\s+disable|state\s+off)|"
         r"\biptables\s+-F\b)", "a firewall opened or turned off"),
    Rule("kernel-module", "T1547.006", "malicious", r"\b(?:insmod|modprobe)\b.*(?:/tmp/|/dev/shm/|/var/tmp/|\.k/)",
         "a kernel module loaded from a temporary directory"),
    Rule("ld-preload", "T1574.006", "malicious", r"/etc/ld\.so\.preload", "the dynamic linker's preload list"),
    Rule("passwd-write", "T1136.001", "malicious", r">>?\s*/etc/(?:passwd|sudoers)\b", "an account written into the system files"),
    Rule("miner", "T1496", "malicious", r"(?:stratum\+(?:tcp|ssl)://|\bxmrig\b|\bminerd\b|\bcpuminer\b)", "a cryptocurrency miner"),
    # Persistence and privilege escalation.
    Rule("ifeo-debugger", "T1546.012", "malicious", r"image file execution options.*\bdebugger\b", "an IFEO debugger set"),
    Rule("accessibility", "T1546.008", "malicious", r"(?:\\(?:sethc|utilman|osk|magnify|narrator)\.exe\b.*\bcmd\.exe|"
         r"copy\b.*cmd\.exe.*\\(?:sethc|utilman)\.exe)", "an accessibility program replaced"),
    Rule("wmi-subscription", "T1546.003", "malicious", r"(?:commandlineeventconsumer|activescripteventconsumer|__eventfilter)",
         "a WMI event subscription"),
    Rule("run-key", "T1547.001", "suspicious", r"\\currentversion\\(?:run|runonce)\b", "a Run key written"),
    Rule("scheduled-task", "T1053.005", "suspicious", r"\bschtasks(?:\.exe)?\b.*/create\b.*" + _USER_DIRS,
         "a scheduled task running from a user-writable directory"),
    Rule("at-job", "T1053.002", "suspicious", r"\bat(?:\.exe)?\s+\d{1,2}:\d{2}\b", "an at job"),
    Rule("service-user-dir", "T1543.003", "suspicious", r"\bsc(?:\.exe)?\s+create\b.*binpath=.*" + _USER_DIRS,
         "a service from a user-writable directory"),
    Rule("login-hook", "T1037.002", "suspicious", r"com\.apple\.loginwindow\s+(?:loginhook|logouthook)", "a login hook"),
    Rule("launch-agent", "T1543.001", "suspicious", r"launchctl\s+(?:load|bootstrap)\b.*(?:/tmp/|/users/shared/)",
         "a launch agent from a shared directory"),
    Rule("admin-group-add", "T1098", "suspicious", r"\bnet1?(?:\.exe)?\s+localgroup\s+administrators\b.*\s/add\b",
         "an account added to the administrators"),
    Rule("suid-search", "T1548.001", "suspicious", r"\bfind\b.*-perm\s+-?[u/]?(?:4000|\+s|-u=s)", "a search for setuid programs"),
    # Discovery, lateral movement and command and control.
    Rule("domain-recon", "T1087.002", "suspicious", r"(?:\bnet1?(?:\.exe)?\s+(?:user|group)\b.*\s/domain\b|\bnltest\b.*"
         r"/(?:dclist|domain_trusts)|\badfind\b|\bdsquery\b|get-aduser\b.*-filter\s+\*)", "a survey of the domain"),
    Rule("port-scan", "T1046", "suspicious", r"\b(?:nmap|masscan|zmap)\b", "a network scanner"),
    Rule("share-everyone", "T1135", "suspicious", r"\bnet1?(?:\.exe)?\s+share\b.*everyone", "a share open to everyone"),
    Rule("rdp-enable", "T1021.001", "suspicious", r"fdenytsconnections\b.*\b0\b", "remote desktop turned on"),
    Rule("remote-login", "T1021.004", "suspicious", r"\bsystemsetup\s+-setremotelogin\s+on\b", "remote login turned on"),
    Rule("psexec", "T1569.002", "suspicious", r"\b(?:psexec(?:64)?|psexesvc|paexec)(?:\.exe)?\b", "PsExec"),
    Rule("remote-tool-silent", "T1219", "suspicious", r"\b(?:anydesk|teamviewer|rustdesk|screenconnect)\S*\s.*(?:--silent|"
         r"/s\b|--install)", "a remote access tool installed silently"),
    Rule("reverse-shell", "T1059.004", "malicious",
         r"(?:/dev/(?:tcp|udp)/|\b(?:nc|ncat|netcat)\b.*\s-(?:e|c)\s|\bsocat\b.*exec:|\bmkfifo\b.*\b(?:nc|ncat)\b|"
         r"\bbash\s+-i\s*>&|pty\.spawn|socket\.socket.*connect|system\.net\.sockets\.tcpclient)",
         "a reverse shell"),
    Rule("listener", "T1571", "suspicious", r"\b(?:nc|ncat|netcat)\b\s+-\w*l", "a network listener"),
    Rule("ssh-tunnel", "T1572", "suspicious", r"\bssh\b.*\s-\w*[RD]\s*\d", "an SSH tunnel"),
)
_COMPILED = tuple((rule, re.compile(rule.pattern, re.I | re.S)) for rule in RULES)

# Characters a reader cannot see: zero-width, joiners, bidirectional controls, the BOM, tags.
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f]")


def normalise(text: str) -> str:
    """The input as a pattern should read it: compatibility forms folded (fullwidth letters),
    invisible characters and cmd's caret escapes removed, and empty quotes inside a word closed up."""
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))
    return re.sub(r'(?<=\w)(?:""|\'\')(?=\w)', "", re.sub(r"\^(?=\S)", "", text))


def floor(text: str) -> tuple[str, list[str]]:
    """The minimum verdict the rules give ``text`` (``benign`` when none matches), and the ids of
    the rules that matched."""
    norm = normalise(text)
    hits = [rule for rule, pattern in _COMPILED if pattern.search(norm)]
    verdict = max((r.verdict for r in hits), key=VERDICT_ORDER.index, default="benign")
    return verdict, [r.id for r in hits]


# What a chat template marks a turn with, in any template this project knows of: ChatML
# (<|im_start|>), Llama 3 (<|start_header_id|>), Phi (<|end|>), every <|word|> token, Gemma's
# <start_of_turn>, Mistral's and Llama 2's [INST] and <<SYS>>, and plain role labels at a line start.
_TURN = re.compile(r"<\|[a-z_]{2,30}\|>|</?(?:start|end)_of_turn>|\[/?INST\]|<</?SYS>>|</?s>\s*\[|"
                   r"(?:^|\n)\s*#{2,}\s*(?:instruction|response|system|assistant|user)\b|"
                   r"(?:^|\n)\s*(?:assistant|system|user|model|human|ai|bot)\s*[:>]", re.I)
_VERDICT_WORDS = r"(?:benign|harmless|safe|clean|legitimate|legit|whitelisted|allow-?listed|not\s+malicious|" \
                 r"false\s+positive|none|malicious|suspicious)"
# An answer forged in the output's own form: a JSON or YAML field, an XML element, a "verdict:" line.
_FORGED = re.compile(r"[\"']?\b(?:answer|verdict|classification|label|result|assessment|decision|category|"
                     r"severity|iocs|indicators)\b[\"']?\s*[:=]\s*[\"'\[]?\s*" + _VERDICT_WORDS + r"?[\"'\]]?|"
                     r"<(?:answer|verdict|classification|label|result)>", re.I)
# Prose that addresses whoever reads the input, or tells it what to answer. About addressing a
# reader, never about words such as "bypass" or "hidden" that admins use every day.
_READERS = (r"(?:ai|a\.i\.|assistant|model|llm|chatbot|classifier|analyst|reviewer|security\s+(?:reviewer|analyst|team)|"
            r"soc|triage|scanner|detection\s+(?:engine|system)|automated\s+(?:review|analysis|system))")
_ADDRESS = [
    # English
    r"\b(?:note|message|notice|attention|instructions?|memo|reminder)\s*(?:to|for)\s+(?:the\s+|any\s+|all\s+)?" + _READERS + r"s?\b",
    r"\b(?:dear|hey|hello|hi)\s+(?:the\s+)?" + _READERS + r"\b",
    r"\b(?:classify|label|mark|tag|treat|consider|rate|report|flag|categori[sz]e|score|answer|respond)\b[^.\n]{0,40}?\b"
    r"(?:as|with|that\s+it\s+is)\s+(?:\w+\s+){0,2}" + _VERDICT_WORDS + r"\b",
    r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|the\s+|your\s+)?(?:previous|prior|above|earlier|"
    r"preceding|system|original)\s+(?:instructions?|rules?|prompts?|context|guidelines?)",
    r"\byou\s+(?:are|must|should|will|need\s+to)\s+(?:now\s+)?(?:classify|answer|respond|reply|output|say|return|"
    r"treat|label|an?\s+(?:helpful|security)\s+assistant)",
    r"\b(?:respond|answer|reply|output)\s+(?:only\s+)?(?:with|using)\s+(?:the\s+word\s+)?[\"']?" + _VERDICT_WORDS,
    r"\b(?:do\s+not|don'?t|never)\s+(?:flag|report|alert|classify|list|mention|include|escalate)\b",
    r"\bno\s+(?:indicators?|iocs?|alert)\s+(?:should|must|need)\b|\breport\s+no\s+(?:indicators?|iocs?)\b",
    # French, German, Spanish, Portuguese, Italian, Dutch
    r"\b(?:classe[rz]?|classifie[rz]?|considère[rz]?|marque[rz]?)\b[^.\n]{0,40}?\bcomme\s+(?:\w+\s+)?"
    r"(?:bénin|bénigne|inoffensi(?:f|ve)|sûr|légitime|sain)",
    r"\b(?:note|message|remarque)\s+(?:pour|à|au|aux)\s+(?:l'|le\s+|la\s+|les\s+)?(?:analyste|ia|assistant|relecteur|"
    r"modèle|soc)",
    r"\b(?:hinweis|nachricht|notiz|anweisung)\s+(?:an|für)\s+(?:den|die|das)?\s*(?:analyst|prüfer|ki|assistent|modell|soc)",
    r"\bals\s+(?:harmlos|gutartig|unbedenklich|sicher|legitim)\w*\s+(?:ein(?:stufen|gestuft)|klassifizier|markier|bewert)",
    r"\b(?:stufe|klassifiziere|markiere|bewerte)\b[^.\n]{0,40}?\bals\s+(?:harmlos|gutartig|unbedenklich|sicher)",
    r"\b(?:nota|mensaje|aviso|instrucciones?)\s+(?:para|al|a\s+la|ao|à)\s+(?:el\s+|la\s+|o\s+|a\s+)?(?:analista|revisor|"
    r"asistente|ia|modelo|soc)",
    r"\b(?:clasific|clasifíqu|classific|consider|marc|tratt|classifiqu)\w*\b[^.\n]{0,40}?\b(?:como|come)\s+(?:\w+\s+)?"
    r"(?:benign[oa]|inofensiv[oa]|segur[oa]|legítim[oa]|innocu[oa]|sicur[oa])",
    r"\b(?:ignora|ignore|ignorar|ignoriere|negeer)\w*\s+(?:las|les|die|le|as|de)?\s*(?:instrucciones|instructions|"
    r"anweisungen|istruzioni|instruções|instructies)\s+(?:anteriores|précédentes|vorherigen|precedenti|eerdere)",
    r"\b(?:classificeer|markeer)\b[^.\n]{0,40}?\bals\s+(?:onschuldig|veilig|goedaardig)",
    # Russian, Chinese, Japanese, Korean
    r"(?:классифицир|считай|пометь|отметь)\w*[^.\n]{0,40}?(?:безопасн|безвредн|доброкачествен|легитимн)",
    r"(?:аналитик|ассистент|модел)\w*\s*[:,]",
    r"(?:игнорируй|забудь)\w*\s+(?:все\s+)?(?:предыдущие|прошлые)\s+(?:инструкции|указания)",
    r"(?:分类为|分類為|归类为|标记为|判定为|视为|認定為|判断为)\s*(?:良性|无害|無害|安全|正常|合法)",
    r"(?:给|致|請|请)?\s*(?:分析师|分析員|审查员|助手|模型|人工智能|AI)\s*[:：的]",
    r"(?:忽略|无视|無視)\s*(?:之前|以上|上述|先前)的?\s*(?:指令|指示|说明)",
    r"(?:良性|無害|安全)\s*(?:と|に)\s*(?:分類|判定|判断|評価)",
    r"(?:アナリスト|レビュアー|アシスタント|モデル)\s*(?:へ|に|様|さん)",
    r"(?:양성|무해|안전)\s*(?:으로|로)\s*(?:분류|판정)",
]
_ADDRESSES = re.compile("|".join(f"(?:{p})" for p in _ADDRESS), re.I)
# Five or more single letters in a row, spaced or dotted ("b e n i g n"): a word hidden from a word match.
_SPACED = re.compile(r"(?<![\w-])(?:[A-Za-z][ ._]){4,}[A-Za-z](?![\w-])")


def injection_hits(text: str) -> list[str]:
    """The signs in ``text`` that it was written for an AI or an analyst, each as the matched text
    (prefixed with its kind: ``turn:``, ``forged:``, ``address:``, ``invisible:``, ``spaced:``).
    Empty for text that shows none."""
    hits = [f"invisible:U+{ord(c):04X}" for c in dict.fromkeys(_INVISIBLE.findall(text))]
    norm = normalise(text)
    for kind, pattern in (("turn", _TURN), ("forged", _FORGED), ("address", _ADDRESSES), ("spaced", _SPACED)):
        hits += [f"{kind}:{m.group(0).strip()[:80]}" for m in pattern.finditer(norm)]
    return list(dict.fromkeys(hits))


# The differential view: what is left of a command line once the parts only a reader reads are cut.
_COMMENT = re.compile(r"<#.*?#>|(?:^|\s)(?:#|//|::|rem\s).*?(?=\n|$)|[&|;]\s*rem\s.*?(?=\n|$)", re.I | re.S)
_QUOTED = re.compile(r"\"([^\"]*)\"|'([^']*)'")
_WORD = re.compile(r"^[^\W\d_][^\W_]*(?:['’-][^\W_]+)*[.,;:!?)]*$")
_CODE = re.compile(r"[|&;$<>`{}\\]|://|^-|/\w+/")
_PROSE_WORDS = 4  # a quoted string of this many words and nothing of code is prose
_TAIL_WORDS = 6  # so is an unquoted run of this many words at the end of the line


def _prose(s: str) -> bool:
    words = s.split()
    return len(words) >= _PROSE_WORDS and not _CODE.search(s) and \
        sum(bool(_WORD.match(w)) for w in words) >= 0.7 * len(words)


def view(text: str) -> str:
    """``text`` with what a reader reads and a machine does not taken out: invisible characters,
    everything from the first template marker or forged answer on, comments, quoted prose, a tail
    of prose, and long runs of a repeated option. The input itself when nothing is cut."""
    out = normalise(text)
    cut = min((m.start() for p in (_TURN, _FORGED) for m in [p.search(out)] if m), default=len(out))
    out = _COMMENT.sub(" ", out[:cut].rstrip("{[< \n"))
    out = _QUOTED.sub(lambda m: '""' if _prose(m.group(1) or m.group(2) or "") else m.group(0), out)
    tokens = out.split()
    keep = len(tokens)
    while keep and _WORD.match(tokens[keep - 1]):
        keep -= 1
    if len(tokens) - keep >= _TAIL_WORDS:
        tokens = tokens[:keep]
    seen: dict[str, int] = {}
    kept = []
    for tok in tokens:  # padding: an option repeated more than twice is kept twice
        key = tok.split("=", 1)[0] if tok.startswith("-") or "=" in tok else tok
        seen[key] = seen.get(key, 0) + 1
        if not (seen[key] > 2 and (tok.startswith("-") or "=" in tok)):
            kept.append(tok)
    stripped = " ".join(kept)
    return text if stripped == " ".join(text.split()) else stripped


def verdict_of(answer: str | None) -> str | None:
    """The one verdict an answer names, or None (no verdict, or several)."""
    found = set(re.findall(r"\b(malicious|suspicious|benign)\b", (answer or "").lower()))
    return found.pop() if len(found) == 1 else None


def _most_severe(*verdicts: str | None) -> str | None:
    known = [v for v in verdicts if v is not None]
    return max(known, key=VERDICT_ORDER.index) if known else None


# A URL's host: the IOC regex alone reads ``//host/file`` as one path, so the domain itself would
# never be among the union's candidates.
_URL_HOST = re.compile(r"\b[a-z][a-z0-9+.\-]*://(?:[^@/\s]*@)?(\[[0-9a-f:.]+\]|[^/\s:?#\[\]\"'<>]+)", re.I)


def ioc_evidence(text: str) -> list[str]:
    """What ``union`` keeps of an IOC item's input whatever the model says: the host of each URL,
    then everything the IOC regex finds (``tasks.ioc_candidates``, which the scorer also reads)."""
    from sweep.correctness.tasks import ioc_candidates

    return list(dict.fromkeys([*_URL_HOST.findall(text), *ioc_candidates(text)]))


def judge(kind: str, text: str, answer: str | None, view_answer: str | None, guard: str,
          candidates: list[str] | None = None) -> tuple[str | None, dict[str, object]]:
    """The final answer under ``guard`` to an item of ``kind`` whose input is ``text``, from the
    model's ``answer`` (and, for ``differential``, its answer on the view), with the evidence:
    which rules fired, which injection signs were found, what each reading said. The final answer
    is at least as severe as the model's (a verdict), or holds every indicator it named and the
    regex's ``candidates`` (an IOC list). For a guard without layers, the model's answer unchanged.
    """
    on = layers(guard)
    if not on:
        return answer, {}
    evidence: dict[str, object] = {"model": answer}
    hits = injection_hits(text) if "detect" in on else []
    if kind == "iocs" and "union" in on:
        named = [line.strip() for line in (answer or "").splitlines() if line.strip()]
        evidence["added"] = [c for c in dict.fromkeys(candidates or []) if c not in named]
        answer = "\n".join(named + evidence["added"]) or answer  # type: ignore[operator]
    if kind != "verdict":
        if hits:
            evidence["injection"] = hits
        return answer, evidence
    verdicts = [verdict_of(answer)]
    if "floor" in on:
        least, fired = floor(text)
        evidence["rules"] = fired
        verdicts.append(least if fired else None)
    if "differential" in on and view_answer is not None:
        evidence["view"] = view_answer
        verdicts.append(verdict_of(view_answer))
        if "detect" in on and VERDICT_ORDER.index(verdict_of(view_answer) or "benign") > \
                VERDICT_ORDER.index(verdict_of(answer) or "benign"):
            hits.append("differential:the input without its prose was judged more severe")
    if hits:
        evidence["injection"] = hits
        verdicts.append("suspicious")
    final = _most_severe(*verdicts)
    evidence["final"] = final
    return (final if final is not None else answer), evidence
