"""Every problem the API can answer, by its stable code, in the languages it speaks.

A problem's English title and detail are written where it is raised (next to the logic that
knows the case); this catalogue holds each code's titles, its detail in Chinese (filled from
the problem's ``params``), and the paragraph its ``type`` page (``/problems/<code>``) shows.
Field error codes (``errors[].code``) have their messages here in both languages.

docs/front-desk-api.md lists the codes; ``tests/test_problems.py`` fails when a code is missing
from this catalogue or from that table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Language = Literal["zh-CN", "en"]
LANGUAGES: tuple[Language, ...] = ("zh-CN", "en")


@dataclass(frozen=True)
class Entry:
    status: int | tuple[int, ...]
    title_en: str
    title_zh: str
    #: the Chinese detail; ``{name}`` placeholders come from the problem's params
    detail_zh: str
    #: what the problem means and what to do (its type page), English then Chinese
    about_en: str
    about_zh: str


def _e(
    status: int | tuple[int, ...],
    title_en: str,
    title_zh: str,
    detail_zh: str,
    about: str,
    about_zh: str,
) -> Entry:
    return Entry(status, title_en, title_zh, detail_zh, about, about_zh)


PROBLEMS: dict[str, Entry] = {
    # -- any request ------------------------------------------------------------------------
    "invalid_request": _e(
        422,
        "Invalid request",
        "请求有误",
        "以下字段需要更正：{fields}",
        "One or more fields of the request are wrong; errors[] names each with its code.",
        "请求中有字段不正确；errors[] 逐一列出字段及其代码。",
    ),
    "malformed_json": _e(
        400,
        "Malformed JSON",
        "JSON 格式错误",
        "请求体不是有效的 JSON",
        "The request body could not be read as JSON.",
        "请求体无法按 JSON 解析。",
    ),
    "unauthorized": _e(
        401,
        "Unauthorized",
        "未授权",
        "请以 'Authorization: Bearer <密钥>' 发送有效的 API 密钥",
        "No API key, or one the gateway does not know (revoked keys too). Ops create keys with "
        "'gateway keys create'.",
        "缺少 API 密钥，或密钥未知（含已吊销的）。运维人员用 'gateway keys create' 创建密钥。",
    ),
    "ops_key_required": _e(
        403,
        "Ops key required",
        "需要运维密钥",
        "此接口只接受运维密钥",
        "The endpoint is for ops; a centre's key cannot call it.",
        "该接口仅供运维使用，中心密钥无权调用。",
    ),
    "key_has_no_scope": _e(
        403,
        "Key has no scope",
        "密钥没有权限范围",
        "此 API 密钥既不属于服务中心，也不是运维密钥",
        "The key is neither a centre's nor ops; ops must replace it.",
        "该密钥既不属于服务中心也不是运维密钥；须由运维更换。",
    ),
    "other_centre": _e(
        403,
        "Other centre",
        "其他中心",
        "中心密钥只能查看本中心的数据",
        "A centre's key lists only its own centre's cases and results.",
        "中心密钥只能列出本中心受理的件和本中心发放的结果。",
    ),
    "unknown_key": _e(
        404,
        "Unknown key",
        "未知密钥",
        "没有 id 为 {id} 的 API 密钥",
        "No API key with this id (GET /v1/ops/keys lists them).",
        "没有这个 id 的 API 密钥（GET /v1/ops/keys 可列出）。",
    ),
    "key_not_active": _e(
        409,
        "Key not active",
        "密钥未生效",
        "该密钥已吊销或已过期，不能轮换",
        "Only a working key can be rotated; this one is revoked or expired.",
        "只有在用的密钥可以轮换；该密钥已吊销或已过期。",
    ),
    "not_found": _e(
        404,
        "Not found",
        "不存在",
        "没有这个地址",
        "No such endpoint; see /openapi.json.",
        "没有这个接口地址；见 /openapi.json。",
    ),
    "method_not_allowed": _e(
        405,
        "Method not allowed",
        "方法不允许",
        "此地址不接受该 HTTP 方法",
        "The endpoint exists but not with this HTTP method.",
        "接口存在，但不接受该 HTTP 方法。",
    ),
    "payload_too_large": _e(
        413,
        "Payload too large",
        "内容过大",
        "请求或文件超过大小上限",
        "The request body or the uploaded file is over the configured limit.",
        "请求体或上传文件超过配置的大小上限。",
    ),
    "bad_cursor": _e(
        400,
        "Bad cursor",
        "分页游标无效",
        "cursor 不是本列表返回的；请不带 cursor 重新开始",
        "Pass back the next_cursor of the same list unchanged, or start again without one.",
        "请原样传回同一列表返回的 next_cursor，或不带 cursor 从第一页开始。",
    ),
    "internal_error": _e(
        500,
        "Internal error",
        "内部错误",
        "网关处理此请求失败；除非已返回 2xx，否则没有任何改动。运维可在日志中查到。",
        "The gateway failed; nothing changed unless a 2xx was returned. Ops find it in the logs.",
        "网关出错；除非已返回 2xx，否则没有任何改动。运维可在日志中查到。",
    ),
    "service_unavailable": _e(
        503,
        "Service unavailable",
        "服务暂不可用",
        "网关暂时无法处理请求。请在 {retry} 秒后重发同一请求："
        "使用同一 Idempotency-Key（或同一上传）"
        "重发是安全的，无论这次是否已保存",
        "The gateway cannot serve the request right now (its database, for one); retry later.",
        "网关暂时无法处理请求（例如数据库不可用），请稍后重试。",
    ),
    "insufficient_storage": _e(
        507,
        "Insufficient storage",
        "存储空间不足",
        "网关暂时没有空间（或权限）保存文件，运维已收到告警。请在 {retry} 秒后重发同一请求",
        "The gateway cannot store files right now (disk full); ops are alerted. Retry later.",
        "网关暂时无法保存文件（磁盘已满），运维已收到告警。请稍后重试。",
    ),
    # -- matters, materials, applications ---------------------------------------------------
    "unknown_matter": _e(
        (404, 422),
        "Unknown matter",
        "未知事项",
        "事项目录中没有编码为 {matter} 的事项",
        "No matter with this code in the catalogue (GET /v1/matters lists them).",
        "事项目录中没有这个编码（GET /v1/matters 可列出全部事项）。",
    ),
    "unknown_region": _e(
        422,
        "Unknown region",
        "未知区划",
        "没有区划代码 {region}",
        "The region is not one of the city's administrative divisions.",
        "该区划不是本市的行政区划。",
    ),
    "not_offered_here": _e(
        422,
        "Matter not offered in region",
        "该区划不办理此事项",
        "事项 {matter} 不在 {region} 办理；办理区划：{offered}",
        "The matter is offered in other regions only; the detail lists them.",
        "该事项只在其他区划办理；详情中列出了可办理的区划。",
    ),
    "matter_not_available": _e(
        422,
        "Matter not available",
        "事项暂不可办",
        "事项 {matter} 的承办部门尚未通过网关受理申请",
        "The department handling the matter is not connected (or is disabled) yet.",
        "承办该事项的部门尚未接入网关（或已停用）。",
    ),
    "form_incomplete": _e(
        422,
        "Form incomplete",
        "表单需要更正",
        "事项 {matter} 的表单需要更正：{fields}",
        "The matter's form does not satisfy its schema; errors[] has one item per field.",
        "表单不符合该事项的表单规范；errors[] 每个字段一项。",
    ),
    "not_a_centre_key": _e(
        403,
        "Not a centre key",
        "不是中心密钥",
        "只有服务中心的密钥可以提交申请",
        "Applications are submitted with a centre's key, not an ops key.",
        "申请须用服务中心的密钥提交，不能用运维密钥。",
    ),
    "unknown_centre": _e(
        422,
        "Unknown centre",
        "未知中心",
        "没有服务中心 {centre}",
        "The pickup centre is not one of the city's service centres.",
        "领取中心不是本市的服务中心。",
    ),
    "pickup_centre_not_allowed": _e(
        422,
        "Pickup centre not allowed",
        "不可异地领取",
        "事项 {matter} 须在受理中心领取",
        "This matter's result is collected where it was handed in.",
        "该事项的结果须在受理中心领取。",
    ),
    "idempotency_key_required": _e(
        400,
        "Idempotency-Key required",
        "缺少 Idempotency-Key",
        "每件申请须发送唯一的 Idempotency-Key 头（可用 UUID）；用同一个键重发是安全的",
        "Send a unique Idempotency-Key header per application; resending with it is safe.",
        "每件申请发送唯一的 Idempotency-Key 请求头；用同一个键重发是安全的。",
    ),
    "bad_idempotency_key": _e(
        400,
        "Bad Idempotency-Key",
        "Idempotency-Key 无效",
        "Idempotency-Key 须为不超过 200 个字符的可打印文本",
        "The Idempotency-Key must be printable text of at most 200 characters.",
        "Idempotency-Key 须为不超过 200 个字符的可打印文本。",
    ),
    "idempotency_key_reused": _e(
        409,
        "Idempotency-Key reused",
        "Idempotency-Key 已被使用",
        "此 Idempotency-Key 已用于另一件申请；新申请请用新键",
        "The key was used before for a different body; use a new key for a new application.",
        "该键已用于内容不同的申请；新申请请使用新键。",
    ),
    "unknown_material": _e(
        422,
        "Unknown material",
        "未知材料",
        "本中心没有上传过材料 {material}；请先用 POST /v1/materials 上传",
        "Materials are uploaded first (POST /v1/materials) and referred to by their id.",
        "材料须先上传（POST /v1/materials），再以其 id 引用。",
    ),
    "unsupported_material_type": _e(
        415,
        "Unsupported material type",
        "材料类型不支持",
        "不接受 {type}；请上传以下类型之一：{allowed}",
        "Scanned documents are accepted as the configured types (PDF, JPEG, PNG by default).",
        "扫描件只接受配置的类型（默认 PDF、JPEG、PNG）。",
    ),
    "empty_file": _e(
        422,
        "Empty file",
        "空文件",
        "上传的文件是空的",
        "The uploaded file has no content.",
        "上传的文件没有内容。",
    ),
    "unknown_application": _e(
        404,
        "Unknown application",
        "未知申请",
        "此密钥看不到申请 {id}",
        "No such case, or one this key may not see (both answer the same).",
        "没有这件申请，或此密钥无权查看（两者回答相同）。",
    ),
    # -- supplements, withdrawals -------------------------------------------------------------
    "no_supplement_asked_for": _e(
        409,
        "No supplement asked for",
        "未要求补正",
        "申请 {id} 当前为 {status}，部门没有要求补正",
        "A supplement is handed in only while the case is supplement_required.",
        "只有在件处于 supplement_required（补正）时才能提交补正材料。",
    ),
    "cannot_withdraw": _e(
        409,
        "Cannot withdraw",
        "无法撤回",
        "申请 {id} 当前为 {status}，已不能撤回",
        "A decided (or already closed) case cannot be withdrawn.",
        "已办结（或已关闭）的件不能撤回。",
    ),
    "no_withdrawal": _e(
        404,
        "No withdrawal",
        "无撤回申请",
        "申请 {id} 没有撤回申请",
        "Nobody asked to withdraw this case.",
        "该件没有提出过撤回。",
    ),
    "no_flagged_withdrawal": _e(
        404,
        "No flagged withdrawal",
        "无待处理撤回",
        "申请 {id} 没有需要运维处理的撤回",
        "The withdrawal does not need ops (or does not exist).",
        "该撤回不需要运维处理（或不存在）。",
    ),
    # -- handing out --------------------------------------------------------------------------
    "unknown_document": _e(
        404,
        "Unknown document",
        "未知文书",
        "申请 {id} 没有文书 {doc_id}",
        "The case has no result document with this id.",
        "该件没有这个 id 的结果文书。",
    ),
    "document_held_by_the_department": _e(
        409,
        "Document held by the department",
        "文书由部门保管",
        "部门只提供了此文书的链接；请从 url 获取",
        "The department only linked the document; fetch it from the url given.",
        "部门只提供了文书链接；请从给出的 url 获取。",
    ),
    "stored_document_damaged": _e(
        500,
        "Stored document damaged",
        "存储的文书已损坏",
        "此文书的存储副本缺失或与其哈希不符；请勿发放，需运维从备份恢复",
        "The stored copy is missing or does not match its sha256; ops must restore it.",
        "存储副本缺失或与 sha256 不符；须由运维恢复。",
    ),
    "not_the_receiving_centre": _e(
        403,
        "Not the receiving centre",
        "不是受理中心",
        "申请 {id} 由 {centre} 受理；只有受理中心可以变更（本中心可以发放）",
        "Only the centre that took the application may withdraw, supplement or mail it.",
        "只有受理中心可以撤回、补正或邮寄该件。",
    ),
    "already_collected": _e(
        409,
        "Already collected",
        "已领取",
        "申请 {id} 的结果已被领取",
        "The result was collected already.",
        "结果已被领取。",
    ),
    "too_many_requests": _e(
        429,
        "Too many requests",
        "请求过于频繁",
        "该密钥的请求过于频繁；请 {retry} 秒后重发（使用同一 Idempotency-Key 是安全的）",
        "This key sends applications or uploads faster than its rate; wait for Retry-After.",
        "该密钥提交或上传的速度超过限额；请按 Retry-After 等待后重发。",
    ),
    "upload_quota_exceeded": _e(
        413,
        "Upload quota exceeded",
        "上传配额已用完",
        "该密钥 24 小时内已上传 {used} 字节，配额为 {quota} 字节",
        "This key uploaded its quota of bytes in the last 24 hours.",
        "该密钥 24 小时内的上传字节数已达配额。",
    ),
    "too_many_failed_checks": _e(
        429,
        "Too many failed checks",
        "核验失败次数过多",
        "身份核验失败次数过多；请稍后再试（见 Retry-After）",
        "Too many failed identity checks for this case or key; wait for Retry-After.",
        "该件或该密钥的身份核验失败次数过多；请按 Retry-After 等待后再试。",
    ),
    "identity_check_needed": _e(
        422,
        "Identity check needed",
        "需要核验身份",
        "请发送 id_number（申请人证件号）或 pickup_code（受理时发放的取件码）之一",
        "Send exactly one of id_number or pickup_code.",
        "id_number 与 pickup_code 须且只能发送其一。",
    ),
    "identity_not_confirmed": _e(
        403,
        "Identity not confirmed",
        "身份未核实",
        "证件号或取件码与此申请不符，或取件码已失效；未发放任何结果",
        "The ID number or pickup code does not match (after five wrong codes the code stops "
        "working); nothing was handed out.",
        "证件号或取件码不符（取件码错误五次后失效）；未发放任何结果。",
    ),
    "handed_out_elsewhere": _e(
        403,
        "Handed out elsewhere",
        "在其他中心发放",
        "申请 {id} 的结果在 {centre} 发放，不在本中心",
        "The result is handed out at another centre.",
        "该结果在其他中心发放。",
    ),
    "not_ready_for_pickup": _e(
        409,
        "Not ready for pickup",
        "尚不能领取",
        "申请 {id} 当前为 {status}；状态为 ready_for_pickup 后才能发放",
        "Results are handed out once the case is ready_for_pickup.",
        "件处于 ready_for_pickup（待领取）后才能发放结果。",
    ),
    "not_ready_for_mailing": _e(
        409,
        "Not ready for mailing",
        "尚不能邮寄",
        "申请 {id} 当前为 {status}；状态为 ready_for_pickup 后才能邮寄",
        "Results are mailed once the case is ready_for_pickup.",
        "件处于 ready_for_pickup（待领取）后才能邮寄结果。",
    ),
    "already_mailed": _e(
        409,
        "Already mailed",
        "已邮寄",
        "申请 {id} 的结果已邮寄",
        "The result was mailed; it cannot be collected at the window.",
        "结果已邮寄，不能再到窗口领取。",
    ),
    "unknown_delivery_method": _e(
        422,
        "Unknown delivery method",
        "未知寄递方式",
        "没有寄递方式 {method}；已安装：{installed}",
        "GET /v1/delivery-methods lists the installed methods.",
        "GET /v1/delivery-methods 列出已安装的寄递方式。",
    ),
    "address_needed": _e(
        422,
        "Address needed",
        "需要地址",
        "受理时没有填写地址：请发送 address",
        "Mailing needs an address: give one here or at intake.",
        "邮寄需要地址：在此提供，或受理时填写。",
    ),
    "cannot_mail": _e(
        422,
        "Cannot mail",
        "无法邮寄",
        "寄递方式拒绝了此件：{reason}",
        "The delivery method refused the parcel; the detail says why.",
        "寄递方式拒绝了此件；详情说明原因。",
    ),
    "delivery_method_failed": _e(
        502,
        "Delivery method failed",
        "寄递方式出错",
        "寄递方式 {method} 出错；未作记录，请重试或换用其他方式",
        "The delivery method failed; nothing was recorded. Try again or use another method.",
        "寄递方式出错，未作任何记录。请重试或换用其他方式。",
    ),
    # -- status subscriptions -----------------------------------------------------------------
    "unknown_subscription": _e(
        404,
        "Unknown subscription",
        "未知订阅",
        "此密钥看不到订阅 {id}",
        "No such webhook subscription, or one this key may not see.",
        "没有这个状态订阅，或此密钥无权查看。",
    ),
    "too_many_subscriptions": _e(
        409,
        "Too many subscriptions",
        "订阅过多",
        "中心 {centre} 的有效订阅已达上限 {limit}；请先删除一个",
        "A centre has at most [gateway.webhooks] max_subscriptions_per_centre active ones.",
        "每个中心的有效订阅数有上限（[gateway.webhooks] max_subscriptions_per_centre）。",
    ),
    "webhook_host_not_allowed": _e(
        422,
        "Webhook host not allowed",
        "不允许的回调地址",
        "网关不可调用主机 {host}（见 [gateway.webhooks] allowed_hosts）",
        "The URL's host is not in [gateway.webhooks] allowed_hosts; ask ops to add it.",
        "该地址的主机不在 [gateway.webhooks] allowed_hosts 中；请联系运维添加。",
    ),
    "bad_event_range": _e(
        422,
        "Bad event range",
        "事件范围无效",
        "from_event 须不大于 to_event",
        "A replay names a range of event ids: from_event <= to_event.",
        "重放须给出事件 id 范围：from_event 不大于 to_event。",
    ),
    # -- ops ----------------------------------------------------------------------------------
    "not_replayable": _e(
        409,
        "Not replayable",
        "不能重发",
        "只有 failed 状态的件可以重发",
        "Only failed cases can be put back to dispatching.",
        "只有 failed（失败）的件可以重新派发。",
    ),
    "not_at_department": _e(
        409,
        "Not at department",
        "不在部门办理中",
        "该件不在部门办理中，无需查询",
        "Only a case its department holds (delivered, accepted, in review, suspended) can be "
        "checked.",
        "只有部门正在办理的件（已送达、已受理、审查中、中止）可以查询。",
    ),
    "unknown_department": _e(
        404,
        "Unknown department",
        "未知部门",
        "没有部门 {department}",
        "No department with this code is configured.",
        "没有配置这个编码的部门。",
    ),
    "no_such_reconciliation_run": _e(
        404,
        "No such reconciliation run",
        "没有该对账记录",
        "没有对账记录 {id}",
        "No reconciliation run with this id.",
        "没有这个 id 的对账记录。",
    ),
    # -- department callbacks (answered to departments: English and Chinese alike) -------------
    "callbacks_not_configured": _e(
        404,
        "Callbacks not configured",
        "未配置回调",
        "该部门未配置回调密钥",
        "The department has no callback secret configured.",
        "该部门未配置回调密钥。",
    ),
    "callbacks_not_supported": _e(
        404,
        "Callbacks not supported",
        "不支持回调",
        "该部门的连接器不接受回调",
        "The department's connector does not take callbacks.",
        "该部门的连接器不接受回调。",
    ),
    "unsigned_callback": _e(
        401,
        "Unsigned callback",
        "回调未签名",
        "须发送 X-Timestamp 和 X-Signature 头",
        "Callbacks are signed (X-Timestamp, X-Signature).",
        "回调须签名（X-Timestamp、X-Signature）。",
    ),
    "bad_timestamp": _e(
        401,
        "Bad timestamp",
        "时间戳无效",
        "X-Timestamp 须为 Unix 秒数",
        "X-Timestamp must be unix seconds.",
        "X-Timestamp 须为 Unix 秒数。",
    ),
    "stale_callback": _e(
        401,
        "Stale callback",
        "回调已过期",
        "时间戳与网关时钟相差过大",
        "The timestamp is outside the accepted window.",
        "时间戳超出允许的时间窗口。",
    ),
    "bad_signature": _e(
        401,
        "Bad signature",
        "签名不符",
        "回调签名不符",
        "The signature does not match the body under the department's secret.",
        "签名与部门密钥下的请求体不符。",
    ),
    "unusable_callback": _e(
        422,
        "Unusable callback",
        "回调无法解析",
        "无法解析回调内容",
        "The callback body could not be read by the department's connector.",
        "部门连接器无法解析回调内容。",
    ),
    "missing_event_id": _e(
        422,
        "Missing event id",
        "缺少事件 id",
        "须发送 X-Event-Id（或 event_id）",
        "Every callback names its event (X-Event-Id or event_id).",
        "每个回调须给出事件 id（X-Event-Id 或 event_id）。",
    ),
    "event_id_not_signed": _e(
        401,
        "Event id not signed",
        "事件 id 未签名",
        "X-Event-Id 与签名覆盖的请求体中的事件 id 不一致",
        "X-Event-Id differs from the event id in the signed body.",
        "X-Event-Id 与已签名请求体中的事件 id 不一致。",
    ),
    "unknown_case": _e(
        404,
        "Unknown case",
        "未知案件",
        "没有对应的案件",
        "The department's case id matches no application.",
        "部门的案件号不对应任何申请。",
    ),
}


#: errors[].code -> (English, Chinese) message; ``{name}`` from the error's params
FIELD_ERRORS: dict[str, tuple[str, str]] = {
    "required": ("is required", "必填"),
    "unknown_field": ("is not a field of this request", "不是本请求的字段"),
    "wrong_type": ("must be {expected}", "类型应为 {expected}"),
    "too_short": ("must be at least {min} characters", "至少 {min} 个字符"),
    "too_long": ("must be at most {max} characters", "最多 {max} 个字符"),
    "too_few": ("needs at least {min} items", "至少 {min} 项"),
    "too_many": ("takes at most {max} items", "最多 {max} 项"),
    "bad_format": ("has the wrong format{hint}", "格式不正确{hint}"),
    "not_allowed": ("must be one of: {allowed}", "须为以下之一：{allowed}"),
    "out_of_range": ("is out of range ({bound})", "超出范围（{bound}）"),
    "bad_datetime": (
        "must be a date-time with a time zone (2026-12-01T09:00:00+08:00)",
        "须为带时区的日期时间（如 2026-12-01T09:00:00+08:00）",
    ),
    "bad_characters": (
        "contains characters that cannot be stored (control characters, lone surrogates)",
        "含有无法保存的字符（控制字符或孤立的 UTF-16 代理项）",
    ),
    "too_deep": ("nests deeper than {max} levels", "嵌套超过 {max} 层"),
    "address_required": (
        "is required when delivery.method is 'mail'",
        "delivery.method 为 'mail' 时必填",
    ),
    "form_rejected": ("{reason}", "{reason}"),
    "invalid": ("is not valid", "无效"),
}

#: hints for bad_format on well-known fields (what the right format is)
FORMAT_HINTS: dict[str, tuple[str, str]] = {
    "region": (
        ": a 6- or 9-digit administrative division code (339900)",
        "：应为 6 位或 9 位行政区划代码（如 339900）",
    ),
}

#: what a type name in wrong_type reads as
TYPE_NAMES: dict[str, tuple[str, str]] = {
    "string": ("text", "文本"),
    "integer": ("a whole number", "整数"),
    "number": ("a number", "数字"),
    "boolean": ("true or false", "布尔值"),
    "object": ("an object", "对象"),
    "array": ("a list", "列表"),
}


def title(code: str, language: Language, english: str) -> str:
    entry = PROBLEMS.get(code)
    if entry is None:
        return english
    return entry.title_zh if language == "zh-CN" else entry.title_en


def detail(code: str, language: Language, english: str, params: dict[str, Any]) -> str:
    """The detail in ``language`` (English: as raised; Chinese: the catalogue's, filled)."""
    entry = PROBLEMS.get(code)
    if language == "en" or entry is None:
        return english
    try:
        return entry.detail_zh.format(**params)
    except (KeyError, IndexError):
        # raised without the values the sentence needs: the title is still right
        return entry.title_zh


def field_message(code: str, language: Language, params: dict[str, Any], field: str) -> str:
    en, zh = FIELD_ERRORS.get(code, FIELD_ERRORS["invalid"])
    values = dict(params)
    if code == "bad_format":
        hint = FORMAT_HINTS.get(field.rsplit(".", 1)[-1])
        values.setdefault("hint", (hint[1] if language == "zh-CN" else hint[0]) if hint else "")
    if code == "wrong_type" and "expected" in values:
        names = [TYPE_NAMES.get(t, (t, t)) for t in str(values["expected"]).split("/")]
        values["expected"] = (" 或 " if language == "zh-CN" else " or ").join(
            n[1] if language == "zh-CN" else n[0] for n in names
        )
    if code == "invalid" and values.get("reason") and language == "en":
        return f"is not valid: {values['reason']}"
    try:
        return (zh if language == "zh-CN" else en).format(**values)
    except (KeyError, IndexError):
        return FIELD_ERRORS["invalid"][1 if language == "zh-CN" else 0]


#: What a citizen brings to the pickup window (``bring[].code`` of a pickup item)
BRING: dict[str, tuple[str, str]] = {
    "id_document": (
        "the applicant's ID document, or the pickup code printed on the receipt",
        "申请人身份证件原件，或受理回执上的取件码",
    ),
    "proxy_authorisation": (
        "someone collecting for the applicant: the applicant's signed authorisation and their "
        "own ID document",
        "他人代领：申请人签字的委托书及代领人本人身份证件",
    ),
    "company_authorisation": (
        "for an organisation: an authorisation letter with its seal and the collector's ID "
        "document",
        "单位申请：加盖公章的授权委托书及领取人身份证件",
    ),
}

#: What the clerk hands over, by decision (``notice`` of a pickup item); approvals have none
NOTICES: dict[str, tuple[str, str]] = {
    "rejected": (
        "Refused (不予许可): hand over the decision and explain the department's opinion.",
        "不予许可：发放不予许可决定，并向申请人说明部门意见。",
    ),
    "not_accepted": (
        "Not accepted (不予受理): hand over the notice and explain the department's opinion.",
        "不予受理：发放不予受理通知，并向申请人说明部门意见。",
    ),
    "mail": (
        "To be mailed: post it with POST /v1/applications/{id}/mail; nobody needs to come.",
        "邮寄送达：用 POST /v1/applications/{id}/mail 寄出，申请人无需到场。",
    ),
}


def pick(texts: tuple[str, str], language: Language) -> str:
    return texts[1] if language == "zh-CN" else texts[0]
