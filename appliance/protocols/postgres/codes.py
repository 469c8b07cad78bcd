"""Message type bytes as ints, for the hot paths that compare them (relay, catalog reader,
codec, pcap renderer).

One home: each is read from its message class in :mod:`.messages`, whose ``TYPE`` is what it
encodes and decodes. SQLSTATEs are in :mod:`.sqlstate`.
"""

from __future__ import annotations

from appliance.protocols.postgres import messages as m

# -- frontend (job -> server) ---------------------------------------------------------------
F_QUERY = m.Query.TYPE[0]
F_PARSE = m.Parse.TYPE[0]
F_BIND = m.Bind.TYPE[0]
F_DESCRIBE = m.Describe.TYPE[0]
F_EXECUTE = m.Execute.TYPE[0]
F_CLOSE = m.Close.TYPE[0]
F_SYNC = m.Sync.TYPE[0]
F_FLUSH = m.Flush.TYPE[0]
F_FUNCTION = m.FunctionCall.TYPE[0]
F_TERMINATE = m.Terminate.TYPE[0]
F_COPY_DATA = m.CopyData.TYPE[0]
F_COPY_DONE = m.CopyDone.TYPE[0]
F_COPY_FAIL = m.CopyFail.TYPE[0]
F_PASSWORD = m.PasswordMessage.TYPE[0]  # also SASLInitialResponse, SASLResponse

# -- backend (server -> job) ----------------------------------------------------------------
B_AUTHENTICATION = m.AuthenticationOk.TYPE[0]
B_PARAMETER = m.ParameterStatus.TYPE[0]
B_KEY = m.BackendKeyData.TYPE[0]
B_NEGOTIATE = m.NegotiateProtocolVersion.TYPE[0]
B_READY = m.ReadyForQuery.TYPE[0]
B_ROWDESC = m.RowDescription.TYPE[0]
B_DATAROW = m.DataRow.TYPE[0]
B_COMPLETE = m.CommandComplete.TYPE[0]
B_EMPTY = m.EmptyQueryResponse.TYPE[0]
B_SUSPENDED = m.PortalSuspended.TYPE[0]
B_ERROR = m.ErrorResponse.TYPE[0]
B_NOTICE = m.NoticeResponse.TYPE[0]
B_NOTIFY = m.NotificationResponse.TYPE[0]
B_PARSE_OK = m.ParseComplete.TYPE[0]
B_BIND_OK = m.BindComplete.TYPE[0]
B_CLOSE_OK = m.CloseComplete.TYPE[0]
B_NODATA = m.NoData.TYPE[0]
B_PARAMDESC = m.ParameterDescription.TYPE[0]
B_COPY_IN = m.CopyInResponse.TYPE[0]
B_COPY_OUT = m.CopyOutResponse.TYPE[0]
B_COPY_BOTH = m.CopyBothResponse.TYPE[0]
B_COPY_DATA = m.CopyData.TYPE[0]
B_COPY_DONE = m.CopyDone.TYPE[0]
B_FUNCTION_RESULT = m.FunctionCallResponse.TYPE[0]
