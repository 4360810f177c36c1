"""A null LMTP server: aiosmtpd on the event loop, 250 for every recipient, keeps nothing.

The baseline the benchmark measures ticketmail against: `python bench/null_lmtp.py PORT`.
"""

import asyncio
import sys

from aiosmtpd.lmtp import LMTP


class Discard:
    async def handle_DATA(self, server, session, envelope):
        return "\r\n".join("250 2.0.0 OK" for _ in envelope.rcpt_tos)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: LMTP(Discard(), data_size_limit=26214400, enable_SMTPUTF8=True, loop=loop), "127.0.0.1", port
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
