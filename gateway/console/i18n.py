"""The console's words in zh-CN (the default) and English: one catalogue, looked up by key.

A key missing from a language falls back to English, then to the key itself, so a page never
breaks for want of a translation (tests/test_console.py checks both languages have every key).
"""

from __future__ import annotations

from collections.abc import Callable

LANGUAGES = ("zh-CN", "en")
DEFAULT = "zh-CN"
COOKIE = "owg_lang"

MESSAGES: dict[str, dict[str, str]] = {
    "title": {"zh-CN": "一窗通办网关 运维控制台", "en": "OneWindow Gateway ops console"},
    "skip": {"zh-CN": "跳到正文", "en": "Skip to content"},
    "nav.overview": {"zh-CN": "全市总览", "en": "City overview"},
    "nav.failures": {"zh-CN": "失败件", "en": "Failures"},
    "nav.cases": {"zh-CN": "办件查询", "en": "Case lookup"},
    "nav.board": {"zh-CN": "效能榜", "en": "效能 board"},
    "nav.keys": {"zh-CN": "接口密钥", "en": "API keys"},
    "nav.plugins": {"zh-CN": "插件", "en": "Plugins"},
    "signin": {"zh-CN": "登录", "en": "Sign in"},
    "signout": {"zh-CN": "退出", "en": "Sign out"},
    "signin.key": {"zh-CN": "运维密钥", "en": "Ops key"},
    "signin.help": {
        "zh-CN": "请输入运维密钥（gateway keys create --ops 生成）。窗口密钥不能登录。",
        "en": "Enter an ops key (made with gateway keys create --ops). Centre keys cannot sign in.",
    },
    "signin.bad": {
        "zh-CN": "密钥无效或已吊销。",
        "en": "This key is not known or was revoked.",
    },
    "signin.centre": {
        "zh-CN": "这是窗口（中心）密钥，控制台只接受运维密钥。",
        "en": "This is a centre key; the console takes ops keys only.",
    },
    "signin.expired": {
        "zh-CN": "会话已过期，请重新登录。",
        "en": "Your session ended; sign in again.",
    },
    "csrf.bad": {
        "zh-CN": "表单已过期，请刷新页面后重试。",
        "en": "This form has expired; reload the page and try again.",
    },
    "signed_in_as": {"zh-CN": "当前用户", "en": "Signed in as"},
    "lang.switch": {"zh-CN": "English", "en": "中文"},
    "col.department": {"zh-CN": "部门", "en": "Department"},
    "col.connector": {"zh-CN": "接入方式", "en": "Connector"},
    "col.health": {"zh-CN": "状态", "en": "Health"},
    "col.breaker": {"zh-CN": "熔断", "en": "Breaker"},
    "col.last_contact": {"zh-CN": "最近成功联络", "en": "Last successful contact"},
    "col.queued": {"zh-CN": "排队", "en": "Queued"},
    "col.in_flight": {"zh-CN": "发送中", "en": "In flight"},
    "col.retrying": {"zh-CN": "重试中", "en": "Retrying"},
    "col.failed": {"zh-CN": "失败", "en": "Failed"},
    "col.overdue": {"zh-CN": "超期", "en": "Overdue"},
    "col.due_soon": {"zh-CN": "2个工作日内到期", "en": "Due within 2 working days"},
    "col.delivered_today": {"zh-CN": "今日送达", "en": "Delivered today"},
    "col.throughput": {"zh-CN": "24小时送达量", "en": "Deliveries, last 24 h"},
    "col.receipt": {"zh-CN": "受理编号", "en": "Receipt"},
    "col.status": {"zh-CN": "状态", "en": "Status"},
    "col.updated": {"zh-CN": "更新时间", "en": "Updated"},
    "col.error": {"zh-CN": "原因", "en": "Reason"},
    "col.matter": {"zh-CN": "事项", "en": "Matter"},
    "col.due_by": {"zh-CN": "应办结日期", "en": "Due by"},
    "col.days_left": {"zh-CN": "剩余工作日", "en": "Working days left"},
    "col.at": {"zh-CN": "时间", "en": "Time"},
    "col.source": {"zh-CN": "来源", "en": "Source"},
    "col.actor": {"zh-CN": "操作者", "en": "Actor"},
    "col.change": {"zh-CN": "变化", "en": "Change"},
    "col.detail": {"zh-CN": "详情", "en": "Detail"},
    "col.name": {"zh-CN": "名称", "en": "Name"},
    "col.scope": {"zh-CN": "范围", "en": "Scope"},
    "col.created": {"zh-CN": "创建时间", "en": "Created"},
    "col.active": {"zh-CN": "有效", "en": "Active"},
    "col.version": {"zh-CN": "版本", "en": "Version"},
    "col.origin": {"zh-CN": "来源", "en": "From"},
    "col.hooks": {"zh-CN": "钩子", "en": "Hooks"},
    "col.rank": {"zh-CN": "名次", "en": "Rank"},
    "col.decided": {"zh-CN": "办结数", "en": "Decided"},
    "col.on_time": {"zh-CN": "按时办结", "en": "On time"},
    "col.on_time_rate": {"zh-CN": "按时办结率", "en": "On-time rate"},
    "col.week": {"zh-CN": "周", "en": "Week"},
    "col.p50": {"zh-CN": "办理时长中位数(天)", "en": "Decision time p50 (days)"},
    "col.p95": {"zh-CN": "办理时长P95(天)", "en": "Decision time p95 (days)"},
    "col.trigger": {"zh-CN": "触发", "en": "Trigger"},
    "col.counts": {"zh-CN": "结果", "en": "Counts"},
    "col.kind": {"zh-CN": "差异", "en": "Discrepancy"},
    "col.action": {"zh-CN": "处理", "en": "Repair"},
    "state.up": {"zh-CN": "正常", "en": "Up"},
    "state.down": {"zh-CN": "故障", "en": "Down"},
    "state.unavailable": {"zh-CN": "未加载", "en": "Not loaded"},
    "breaker.open": {"zh-CN": "已熔断", "en": "Open"},
    "breaker.closed": {"zh-CN": "正常", "en": "Closed"},
    "never": {"zh-CN": "从未", "en": "never"},
    "yes": {"zh-CN": "是", "en": "yes"},
    "no": {"zh-CN": "否", "en": "no"},
    "refreshed": {"zh-CN": "自动刷新", "en": "Refreshes itself"},
    "filter": {"zh-CN": "筛选", "en": "Filter"},
    "all": {"zh-CN": "全部", "en": "All"},
    "replay": {"zh-CN": "重新发送", "en": "Replay"},
    "replay.selected": {"zh-CN": "重新发送所选", "en": "Replay selected"},
    "replay.confirm": {"zh-CN": "确认重新发送以下办件？", "en": "Replay these cases?"},
    "replay.done": {"zh-CN": "已重新发送", "en": "Replayed"},
    "replay.none": {"zh-CN": "未选择办件。", "en": "No case selected."},
    "confirm": {"zh-CN": "确认", "en": "Confirm"},
    "cancel": {"zh-CN": "取消", "en": "Cancel"},
    "select": {"zh-CN": "选择", "en": "Select"},
    "no_failures": {"zh-CN": "没有失败件。", "en": "No failed cases."},
    "lookup": {"zh-CN": "查询", "en": "Look up"},
    "lookup.label": {"zh-CN": "办件编号或受理编号", "en": "Application id or receipt number"},
    "lookup.none": {"zh-CN": "没有找到该办件。", "en": "No such case."},
    "lookup.audited": {
        "zh-CN": "每次查询都记入个人信息访问审计。",
        "en": "Every lookup is recorded in the personal-data audit trail.",
    },
    "case.applicant": {"zh-CN": "申请人", "en": "Applicant"},
    "case.history": {"zh-CN": "办理记录", "en": "History"},
    "case.documents": {"zh-CN": "结果文书", "en": "Documents"},
    "case.pickup": {"zh-CN": "领取方式", "en": "Pickup"},
    "case.promised": {"zh-CN": "承诺办结日期", "en": "Promised by"},
    "keys.create": {"zh-CN": "新建密钥", "en": "Create a key"},
    "keys.centre": {"zh-CN": "中心", "en": "Centre"},
    "keys.ops": {"zh-CN": "运维", "en": "Ops"},
    "keys.shown_once": {
        "zh-CN": "新密钥只显示这一次，请立即妥善保存：",
        "en": "The new key is shown this once; store it now:",
    },
    "keys.revoke": {"zh-CN": "吊销", "en": "Revoke"},
    "keys.revoked": {"zh-CN": "已吊销", "en": "revoked"},
    "plugins.failures": {"zh-CN": "加载失败的插件", "en": "Plugins that failed to load"},
    "plugins.unavailable": {"zh-CN": "不可用的部门", "en": "Departments not available"},
    "none": {"zh-CN": "无", "en": "none"},
    "dept.decisions": {"zh-CN": "每周办理时长", "en": "Decision time per week"},
    "dept.on_time": {"zh-CN": "每周按时办结率", "en": "On-time rate per week"},
    "dept.overdue": {"zh-CN": "超期办件", "en": "Overdue cases"},
    "dept.failures": {"zh-CN": "失败件", "en": "Failures"},
    "dept.reconcile": {"zh-CN": "对账记录", "en": "Reconciliation runs"},
    "dept.settings": {"zh-CN": "配置（密钥不显示）", "en": "Settings (secrets never shown)"},
    "board.period": {"zh-CN": "统计期间", "en": "Period"},
    "board.from": {"zh-CN": "起", "en": "From"},
    "board.to": {"zh-CN": "止", "en": "To"},
    "board.show": {"zh-CN": "显示", "en": "Show"},
    "board.csv": {"zh-CN": "导出CSV", "en": "Export CSV"},
    "board.note": {
        "zh-CN": "超期与到期数与 gateway deadlines 相同（暂停期间不计时）。",
        "en": "Overdue and due-soon counts equal gateway deadlines (the clock pauses during "
        "supplement and special procedure).",
    },
}


def translator(lang: str) -> Callable[[str], str]:
    def t(key: str) -> str:
        entry = MESSAGES.get(key)
        if entry is None:
            return key
        return entry.get(lang) or entry.get("en") or key

    return t


def pick(cookie: str | None) -> str:
    return cookie if cookie in LANGUAGES else DEFAULT
