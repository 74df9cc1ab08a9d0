"""A real OpenAI client against the proxy: the official `openai` Python SDK with strict
response validation, so every body and stream event must match the SDK's own models.

Usage: openai_client.py SCENARIO BASE_URL
Scenarios: chat-tools, completions (wrapper routes on a Responses upstream that replays a
recorded parallel-tool-call / text stream), responses-bridge (bridge mode on a chat upstream),
responses-websocket (`client.responses.connect()`, WebSocket mode, needs `openai[realtime]`),
responses-websocket-deflate (the same with a message size limit, with which the SDK leaves
`websockets`' permessage-deflate offer on; without one it turns compression off),
responses-previous (two stored responses chained by previous_response_id, the first read back).
Exits 0 and prints "ok: …" lines when every check holds.
"""
import json
import sys

import openai


def client(base_url, strict=True):
    return openai.OpenAI(
        base_url=base_url,
        api_key="client-side-key-ignored-by-the-proxy",
        max_retries=0,
        _strict_response_validation=strict,
    )


def check(condition, message):
    if not condition:
        print(f"FAILED: {message}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {message}")


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def chat_tools(base_url):
    c = client(base_url)
    messages = [{"role": "user", "content": "Weather in Paris and Rome?"}]
    calls = {}
    finish = None
    usage = None
    stream = c.chat.completions.create(
        model="gpt-5",
        messages=messages,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.finish_reason:
                finish = choice.finish_reason
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                if call.id:
                    entry["id"] = call.id
                if call.function and call.function.name:
                    entry["name"] += call.function.name
                if call.function and call.function.arguments:
                    entry["arguments"] += call.function.arguments
    check(sorted(calls) == [0, 1], f"two parallel calls at indices 0 and 1 (got {sorted(calls)})")
    for index, call in calls.items():
        json.loads(call["arguments"])
        check(call["id"] and call["name"], f"call {index} has an id and a name")
    check(len({c["id"] for c in calls.values()}) == 2, "call ids differ")
    check(finish == "tool_calls", f"streamed finish_reason is tool_calls (got {finish})")
    check(usage is not None and usage.total_tokens > 0, "usage chunk with include_usage")

    whole = c.chat.completions.create(model="gpt-5", messages=messages, tools=TOOLS)
    choice = whole.choices[0]
    check(choice.finish_reason == "tool_calls", "non-stream finish_reason is tool_calls")
    check(len(choice.message.tool_calls) == 2, "non-stream message has both tool calls")
    for call in choice.message.tool_calls:
        json.loads(call.function.arguments)
    check(whole.usage.total_tokens > 0, "non-stream usage")


def completions(base_url):
    c = client(base_url)
    # The SDK types stream chunks as `Completion`, whose finish_reason may not be null, so no
    # legacy completions stream (OpenAI's own included) passes strict validation chunk by
    # chunk: the stream is read leniently and its shape checked here instead.
    text = ""
    finishes = []
    for chunk in client(base_url, strict=False).completions.create(model="gpt-5", prompt="Say hi", stream=True):
        check(chunk.object == "text_completion", "chunk object is text_completion")
        for choice in chunk.choices:
            text += choice.text
            if choice.finish_reason is not None:
                finishes.append(choice.finish_reason)
    check(text.strip() != "", f"streamed completion text ({text!r})")
    check(finishes == ["stop"], f"exactly one finish_reason, stop (got {finishes})")
    whole = c.completions.create(model="gpt-5", prompt="Say hi")
    check(whole.choices[0].text.strip() != "", "non-stream completion text")
    check(whole.usage.total_tokens > 0, "completion usage")
    # Several prompts (and an effort suffix written with `_`): one choice per prompt, in
    # order, usage summed, the model the upstream reported.
    several = c.completions.create(model="gpt-5_minimal", prompt=["Say hi", "Say bye"])
    check([choice.index for choice in several.choices] == [0, 1], "one choice per prompt")
    check(several.usage.total_tokens == 2 * whole.usage.total_tokens, "usage summed over prompts")
    check(several.model == "gpt-5-2025-08-07", f"the upstream's model (got {several.model})")
    indices = []
    for chunk in client(base_url, strict=False).completions.create(
        model="gpt-5_minimal", prompt=["Say hi", "Say bye"], stream=True
    ):
        indices += [choice.index for choice in chunk.choices if choice.finish_reason is not None]
    check(indices == [0, 1], f"a finish per prompt, in order (got {indices})")


def responses_bridge(base_url):
    c = client(base_url)
    kinds = []
    final = None
    with c.responses.stream(model="gpt-4.1", input="Say hello") as stream:
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_response()
    check(kinds[0] == "response.created", "stream starts with response.created")
    check(kinds[-1] == "response.completed", "stream ends with response.completed")
    check(final.output_text.strip() != "", f"final output text ({final.output_text!r})")
    whole = c.responses.create(model="gpt-4.1", input="Say hello", stream=False)
    check(whole.status == "completed" and whole.output_text == final.output_text, "stream:false gives the same answer")


def one_websocket_response(connection):
    """The events of one response on `connection`, up to its last; the final response."""
    kinds = []
    for event in connection:
        kinds.append(event.type)
        if event.type in ("error", "response.failed"):
            check(False, f"the response failed: {event}")
        if event.type == "response.completed":
            return kinds, event.response
    check(False, f"the socket closed mid-response after {kinds}")


def responses_websocket(base_url, options=None):
    c = client(base_url)
    with c.responses.connect(websocket_connection_options=options or {}) as connection:
        connection.response.create(model="gpt-4.1", input="Say hello")
        kinds, first = one_websocket_response(connection)
        check(kinds[0] == "response.created", "the socket's stream starts with response.created")
        check(first.output_text.strip() != "", f"final output text over the socket ({first.output_text!r})")
        connection.response.create(model="gpt-4.1", previous_response_id=first.id, input="Again")
        _, second = one_websocket_response(connection)
        check(second.id != first.id, "a second response on the same socket, after the first")
        connection.response.create(model="gpt-4.1", previous_response_id="resp_unknown", input="x")
        error = connection.recv()
        check(
            error.type == "error" and error.error.code == "previous_response_not_found",
            f"an unknown previous_response_id is an error event ({error})",
        )


def responses_previous(base_url):
    """Two stored responses over HTTP, the second continuing the first by
    previous_response_id (the SDK's default store: true); prints the first id."""
    c = client(base_url)
    first = c.responses.create(model="gpt-4.1", input="My name is Ada.")
    check(first.status == "completed" and first.output_text.strip() != "", "a first stored response")
    second = c.responses.create(model="gpt-4.1", previous_response_id=first.id, input="What is my name?")
    check(second.status == "completed" and second.id != first.id, "a second response continuing the first")
    fetched = c.responses.retrieve(first.id)
    check(fetched.id == first.id and fetched.output_text == first.output_text, "the first response read back by id")
    print(f"first-id: {first.id}")


SCENARIOS = {
    "chat-tools": chat_tools,
    "completions": completions,
    "responses-bridge": responses_bridge,
    "responses-websocket": responses_websocket,
    "responses-websocket-deflate": lambda url: responses_websocket(url, {"max_size": 16 << 20}),
    "responses-previous": responses_previous,
}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](sys.argv[2])
