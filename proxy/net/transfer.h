/* One proxied request: the MHD side (client) and the libcurl side
 * (upstream), joined by two bounded buffers. Everything here runs on the
 * worker thread that owns the connection. */
#ifndef SP_TRANSFER_H
#define SP_TRANSFER_H
#include <curl/curl.h>
#include <stdbool.h>
#include <sys/queue.h>
#include <microhttpd.h>

#include "core/buf.h"
#include "core/errors.h"
#include "core/headers.h"
#include "net/worker.h"
#include "core/resp_head.h"
#include "core/route.h"

struct worker;
struct client;
struct ws;

/* Why the MHD connection is suspended. */
enum t_wait { WAIT_NONE, WAIT_HEADERS, WAIT_UPLOAD, WAIT_DATA };

enum t_phase { PH_NEW, PH_BODY, PH_RESPOND, PH_DONE };

/* Where the upstream leg is: one state instead of a flag per fact. */
enum t_leg {
	LEG_NONE,	/* none (yet): a local answer, a refusal, or before */
	LEG_PARKED,	/* waiting for a run-task registration */
	LEG_CONNECTING,	/* WebSocket: curl opens the connection */
	LEG_SENDING,	/* the request goes up; no final head yet */
	LEG_RECEIVING,	/* the final head is in; the body follows */
	LEG_DONE,	/* the upstream finished its answer */
	LEG_FAILED	/* ended by an error or a timeout */
};

struct transfer {
	struct curl_owner	 owner;		/* first member */
	struct worker		*w;
	struct client		*cl;
	struct MHD_Connection	*con;
	enum t_phase		 phase;
	enum t_wait		 wait;
	char			*raw_target;
	const char		*method;
	const char		*mode;		/* "forward", "gateway", "local" */
	struct req_info		 ri;

	/* the destination and what classification decided for it */
	struct route		 rt;
	const char		*provider;	/* lives as long as the table */
	int			 route_kind;	/* enum route_kind */
	int			 action;	/* enum action */
	char			 task_fp[9];	/* "" when no credential */
	bool			 req_sent;	/* some of it written upstream */

	/* upstream side */
	CURL			*easy;
	struct curl_slist	*req_headers;
	struct buf		 up;		/* client body -> upstream */
	struct buf		 down;		/* upstream body -> client */
	enum t_leg		 leg;
	bool			 upload_eof;
	bool			 send_paused;	/* curl waits for client body */
	bool			 recv_paused;	/* the client is the slow side */
	int			 reused;	/* -1 unknown */

	/* response */
	bool			 resp_ready;	/* head or error answer known */
	int			 status;	/* what the client is answered */
	struct resp_head	 head;		/* the upstream's head */
	enum perr		 err;
	char			*err_msg;
	bool			 is_error;
	char			*local_body;	/* the proxy's own answer */
	int			 local_status;
	const char		*local_ctype;	/* NULL: application/json */
	const char		*err_header;	/* 407: the auth scheme */

	bool			 client_gone;
	long long		 bytes_in;
	long long		 bytes_out;
	char			 tail[4];	/* the last bytes sent */
	long long		 start_ms;
	long long		 last_io;	/* last byte to or from upstream */
	struct deadline		 idle_dl;	/* w->idle_heap: last_io + idle */

	struct ws		*ws;		/* WebSocket handshake, or NULL */

	/* invalid_task_id recovery: the body is kept for one replay */
	struct buf		 replay;
	bool			 replay_ok;
	bool			 inspecting;	/* holding an error answer to read it */
	bool			 retried;
	bool			 audited;	/* its line is written */
	bool			 reg_waited_out;
	long long		 reg_deadline;
	LIST_ENTRY(transfer)	 reg_entry;	/* w->reg_waiters, when parked */

	bool			 in_unpause;
	LIST_ENTRY(transfer)	 unpause_entry;	/* w->unpause */
	LIST_ENTRY(transfer)	 live_entry;	/* w->live */
};

void	*transfer_uri_log(void *cls, const char *uri, struct MHD_Connection *con);
enum MHD_Result transfer_access(void *cls, struct MHD_Connection *con,
	    const char *url, const char *method, const char *version,
	    const char *upload_data, size_t *upload_data_size, void **con_cls);
void	 transfer_completed(void *cls, struct MHD_Connection *con,
	    void **con_cls, enum MHD_RequestTerminationCode toe);

/* What a worker's MHD daemon and loop call for requests. */
extern const struct worker_reqs transfer_reqs;
/* Registers with w's loop: re-deciding requests parked for a
 * registration, the upstream idle deadlines (a heap: no periodic walk)
 * and the drain wait for requests in flight. */
int	 transfer_attach(struct worker *w, char *err, size_t errlen);

void	 transfer_curl_done(struct curl_owner *o, CURLcode rc);
void	 transfer_unpause(struct transfer *t);
void	 transfer_client_gone(struct transfer *t);
/* Re-decides requests parked for a registration that ended or took too
 * long (ticked at least every 250 ms while any is parked). */
void	 transfer_reg_poll(struct worker *w, long long now);

#endif
