# keyd, built from this repository. Used by docker-compose.yml.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/keyd ./cmd/keyd

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/keyd /usr/local/bin/keyd
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/keyd"]
CMD ["serve"]
