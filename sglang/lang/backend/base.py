"""BaseBackend: what the interpreter asks of a model backend (our runtime or an API model)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

from sglang.lang.chat_template import ChatTemplate, get_chat_template
from sglang.lang.choices import ChoicesDecision, ChoicesSamplingMethod

if TYPE_CHECKING:
    from sglang.lang.interpreter import StreamExecutor
    from sglang.lang.ir import SglSamplingParams


class BaseBackend:
    """A backend generates text for a program state.

    The state `s` (a StreamExecutor) exposes, read-only for backends:
      s.text_        the whole prompt text so far (roles already formatted by the chat template)
      s.messages_    the same as OpenAI-style messages: [{"role": ..., "content": str | parts}],
                     where parts are {"type": "text", "text": ...} and
                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}
      s.cur_images   images appended since the last generation: list of (path_or_None, base64_str)
      s.images_      every image of the program so far, same format
      s.cur_role     the role whose turn is open ("system" | "user" | "assistant" | None)
      s.cur_role_begin_pos  index in s.text_ where the open role's content begins
      s.sid          a unique id of this state (forks get their own)
      s.num_api_spec_tokens  set by @function(num_api_spec_tokens=N), else None
    """

    def __init__(self) -> None:
        self.support_concate_and_append = False
        self.chat_template: ChatTemplate = get_chat_template("default")

    def get_model_name(self) -> str:
        raise NotImplementedError()

    def get_chat_template(self) -> ChatTemplate:
        return self.chat_template

    def cache_prefix(self, prefix_str: str) -> None:
        """Ask the backend to cache a prompt prefix (a no-op where the backend cannot)."""

    def uncache_prefix(self, rid: str) -> None:
        pass

    def end_request(self, rid: Union[str, list[str]]) -> None:
        pass

    def begin_program(self, s: "StreamExecutor") -> None:
        pass

    def end_program(self, s: Union["StreamExecutor", list["StreamExecutor"]]) -> None:
        pass

    def commit_lazy_operations(self, s: "StreamExecutor") -> None:
        pass

    def fork_program(self, src: "StreamExecutor", dst: list["StreamExecutor"]) -> None:
        pass

    def fill_image(self, s: "StreamExecutor") -> None:
        pass

    def generate(
        self, s: "StreamExecutor", sampling_params: "SglSamplingParams"
    ) -> tuple[Union[str, list[str]], Union[dict[str, Any], list[dict[str, Any]]]]:
        """Generate from s.text_ / s.messages_; return (text, meta_info). With n > 1, lists."""
        raise NotImplementedError()

    def generate_stream(
        self, s: "StreamExecutor", sampling_params: "SglSamplingParams"
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield (text_delta, meta_info) pieces; the last meta_info is the final one."""
        raise NotImplementedError()

    def select(
        self,
        s: "StreamExecutor",
        choices: list[str],
        temperature: float,
        choices_method: Optional[ChoicesSamplingMethod] = None,
    ) -> ChoicesDecision:
        raise NotImplementedError()

    def concatenate_and_append(self, src_rids: list[str], dst_rid: str) -> None:
        raise NotImplementedError()

    def flush_cache(self) -> None:
        pass

    def get_server_info(self) -> dict[str, Any]:
        raise NotImplementedError()

    def shutdown(self) -> None:
        pass
